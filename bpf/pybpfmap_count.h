/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the nmi and writers programs share, included after PYBPFMAP_MAP(MAP):
 * the counter slot of a map op's result (-ret; 0 = success; the last slot,
 * NERRNO - 1, for anything beyond), the log2 slot of a time (floor(log2 ns),
 * 0 also for 0 ns, the last of NSLOTS for anything beyond), a counter's
 * increment and a maximum's update, and key K of MAP (its first bytes, the
 * rest zero).  Counters are looked up by name where
 * they are bumped: BCC turns a map into its fd only in a map call, not in a
 * "&map" handed to a function.
 */
#ifndef PYBPFMAP_COUNT_H
#define PYBPFMAP_COUNT_H

static __always_inline u32 slot_of(long ret)
{
	u32 slot = ret < 0 ? (u32)-ret : 0;

	return slot < NERRNO ? slot : NERRNO - 1;
}

static __always_inline u32 log2_slot(u64 ns)
{
	u32 slot = bpf_log2l(ns);       /* floor(log2(ns)) + 1 */

	slot = slot ? slot - 1 : 0;
	return slot < NSLOTS ? slot : NSLOTS - 1;
}

static __always_inline void bump(u64 *c)
{
	if (c)
		*c += 1;
}

static __always_inline void raise_to(u64 *c, u64 v)
{
	if (c && v > *c)
		*c = v;
}

static __always_inline void set_key(struct MAP_key *k, u32 n)
{
	__builtin_memcpy(k->b, &n, sizeof(n) < sizeof(k->b) ? sizeof(n) : sizeof(k->b));
}

#endif
