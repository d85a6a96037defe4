/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One map, declared through BCC from a MapSpec (see pybpfmap_map.h); used to
 * check that what BCC creates is what the spec says (map_flags read back
 * from the kernel with BPF_OBJ_GET_INFO_BY_FD).
 */
#include "pybpfmap_map.h"

PYBPFMAP_MAP(MAP);
