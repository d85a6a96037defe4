/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap tracefill: insert keys into a map user space made, from a raw
 * tracepoint program run with BPF_PROG_TEST_RUN (pybpfmap/tracefill.py).
 *
 * bpf_prog_test_run_raw_tp (net/bpf/test_run.c, v5.10) runs the program with
 * preemption disabled and under rcu_read_lock(): the context of a tracing
 * program, so a BPF_F_NO_PREALLOC map allocates its elements without sleeping.
 *
 *   fill_burst  raw_tp, never attached: ctx args = (first key, count).  Inserts
 *               keys first .. first + min(count, BURST) - 1 (little-endian in
 *               the key's first 4 bytes, the rest zero) with BPF_NOEXIST and a
 *               zero value; returns how many went in.  Every result is counted
 *               in fill_counts.n[slot] (pybpfmap_count.h's slot_of(): -ret, 0 =
 *               success, the last slot for anything beyond).
 *   percpu:percpu_alloc_percpu_fail  (only with PCPU_FAIL_TP, when this kernel
 *               has the tracepoint): the kernel's own record of a failed
 *               per-CPU allocation, anywhere on the system, counted in
 *               pcpu_fail[is_atomic].
 *
 * Parameters (-D): MAP_* (pybpfmap_map.h), MAP_PINNED (the bpffs path of the
 * map, as in bench_triple.c), BURST (the loop's bound, default 256: a bounded
 * loop, which the verifier accepts since v5.3), NERRNO (a power of two),
 * PCPU_FAIL_TP.
 */
#include <linux/errno.h>
#include "pybpfmap_map.h"

#ifndef BURST
#define BURST 256
#endif
#define NSLOTS 1	/* pybpfmap_count.h's log2 slots: no latency kept here */

PYBPFMAP_USER_MAP(MAP);
#include "pybpfmap_count.h"

/* One struct per CPU, looked up once per run: no lookup (and no branch the
 * verifier must follow) per insert. */
struct fill_counts { u64 n[NERRNO]; };
BPF_PERCPU_ARRAY(fill_counts, struct fill_counts, 1);
/* The key and the value, off the 512-byte stack: values may be large. */
BPF_PERCPU_ARRAY(fill_key, struct MAP_key, 1);
BPF_PERCPU_ARRAY(fill_value, struct MAP_value, 1);

/* Hide x from the compiler: in the loop, clang would otherwise fold the two
 * exits (BURST, count) into one down-counter from an unknown start, a loop the
 * 5.10 verifier cannot bound ("The sequence of 8193 jumps is too complex"); on
 * the slot, it would drop the mask as redundant after slot_of()'s clamp, whose
 * compare it makes on a copy of the register it then indexes with ("R1
 * unbounded memory access"). */
#define opaque(x) asm volatile("" : "+r"(x))

int fill_burst(struct bpf_raw_tracepoint_args *ctx)
{
	u64 first = ctx->args[0];
	u64 count = ctx->args[1];
	struct fill_counts *c;
	struct MAP_value *v;
	struct MAP_key *k;
	u32 zero = 0, slot, i;
	u64 before;
	long ret;

	c = fill_counts.lookup(&zero);
	k = fill_key.lookup(&zero);
	v = fill_value.lookup(&zero);
	if (!c || !k || !v)
		return 0;
	before = c->n[0];
	for (i = 0; i < BURST; i++) {
		opaque(i);
		if (i >= count)
			break;
		set_key(k, first + i);
		ret = MAP.insert(k, v);         /* BCC: bpf_map_update_elem(..., BPF_NOEXIST) */
		slot = slot_of(ret);
		opaque(slot);           /* keep the mask: the verifier's bound for the index */
		c->n[slot & (NERRNO - 1)]++;
	}
	return c->n[0] - before;        /* inserted in this run */
}

#ifdef PCPU_FAIL_TP
BPF_PERCPU_ARRAY(pcpu_fail, u64, 2);

TRACEPOINT_PROBE(percpu, percpu_alloc_percpu_fail)
{
	u32 atomic = args->is_atomic ? 1 : 0;

	bump(pcpu_fail.lookup(&atomic));
	return 0;
}
#endif
