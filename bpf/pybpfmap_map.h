/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Declare a hash map from the -D defines that pybpfmap.maps.MapSpec.cflags(NAME)
 * produces:  NAME_TYPE ("hash", "percpu_hash", "lru_hash", "lru_percpu_hash"),
 * NAME_KEY_SIZE, NAME_VALUE_SIZE, NAME_MAX_ENTRIES and NAME_FLAGS (0, or
 * BPF_F_NO_PREALLOC).  BPF_HASH() cannot take flags, so the base macro
 * BPF_F_TABLE() is used.  Keys and values are byte arrays of the requested size.
 */
#ifndef PYBPFMAP_MAP_H
#define PYBPFMAP_MAP_H

#define PYBPFMAP_MAP(name)                                                    \
	struct name##_key { u8 b[name##_KEY_SIZE]; };                         \
	struct name##_value { u8 b[name##_VALUE_SIZE]; };                     \
	BPF_F_TABLE(name##_TYPE, struct name##_key, struct name##_value, name, \
		    name##_MAX_ENTRIES, name##_FLAGS)

/*
 * PYBPFMAP_USER_MAP(name): with -DMAP_PINNED="path", the map user space
 * created itself (in its own memory cgroup, say) and pinned at path, so that
 * BCC uses it instead of making one (pybpfmap/pin.py); else PYBPFMAP_MAP(name).
 */
#ifdef MAP_PINNED
#define PYBPFMAP_USER_MAP(name)                                               \
	struct name##_key { u8 b[name##_KEY_SIZE]; };                         \
	struct name##_value { u8 b[name##_VALUE_SIZE]; };                     \
	BPF_TABLE_PINNED(name##_TYPE, struct name##_key, struct name##_value,  \
			 name, name##_MAX_ENTRIES, MAP_PINNED, name##_FLAGS)
#else
#define PYBPFMAP_USER_MAP(name) PYBPFMAP_MAP(name)
#endif

#endif
