/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap stress, the allocator scenario: a handler for lock-path events (a
 * kprobe on a spin_unlock function, or the weaker tracepoint variant) that
 * runs update -> lookup -> delete on one map MAP and counts each result per
 * errno and per probe, in a per-CPU array.
 *
 * The idea is the one behind Linux kernel commit 6c9059817432 ("bpf:
 * pre-allocate hash map elements") (in v4.6) and samples/bpf/spintest: a map
 * update from inside a lock path must neither deadlock nor allocate in a way
 * that re-enters the lock.
 *
 * Parameters (-D, from pybpfmap/stress/allocator.py):
 *   MAP_*      the map (pybpfmap_map.h, MapSpec.cflags)
 *   NPROBES    handler entry points on_probe0 .. on_probe<NPROBES-1> (at most 8)
 *   NERRNO     counter slots per (probe, op): slot e counts return value -e
 *              (slot 0 = success); a larger errno counts in the last slot and
 *              is kept in stress_errno
 *
 * Counter index: (probe * NOPS + op) * NERRNO + slot.
 */
#include <uapi/linux/ptrace.h>
#include "pybpfmap_map.h"

#define NOPS 3
#define OP_UPDATE 0
#define OP_LOOKUP 1
#define OP_DELETE 2

PYBPFMAP_MAP(MAP);

BPF_PERCPU_ARRAY(stress_counts, u64, NPROBES * NOPS * NERRNO);
/* Last errno beyond the slots, per (probe, op). */
BPF_ARRAY(stress_errno, s32, NPROBES * NOPS);
/* The value is built here: a big one (2 KiB, to reach SLUB's slow path with
 * few elements per slab) does not fit on the 512-byte BPF stack. */
BPF_PERCPU_ARRAY(stress_value, struct MAP_value, 1);

static __always_inline void count(u32 probe, u32 op, int ret)
{
	u32 slot = ret < 0 ? (u32)-ret : 0;
	u32 idx;
	u64 *c;

	if (slot >= NERRNO) {
		u32 o = probe * NOPS + op;
		s32 *e = stress_errno.lookup(&o);

		if (e)
			*e = ret;
		slot = NERRNO - 1;
	}
	idx = (probe * NOPS + op) * NERRNO + slot;
	c = stress_counts.lookup(&idx);
	if (c)
		*c += 1;
}

/*
 * The key is the CPU number, so the three operations on one CPU work on one
 * element and different CPUs share the bucket array.  A lookup has no errno:
 * found is 0, missing is -ENOENT.
 */
static __always_inline void exercise(u32 probe)
{
	u32 cpu = bpf_get_smp_processor_id();
	u64 now = bpf_ktime_get_ns();
	struct MAP_key k = {};
	struct MAP_value *v;
	u32 zero = 0;

	v = stress_value.lookup(&zero);
	if (!v)
		return;
	__builtin_memcpy(k.b, &cpu, sizeof(cpu) < sizeof(k.b) ? sizeof(cpu) : sizeof(k.b));
	__builtin_memcpy(v->b, &now, sizeof(now) < sizeof(v->b) ? sizeof(now) : sizeof(v->b));
	count(probe, OP_UPDATE, MAP.update(&k, v));
	count(probe, OP_LOOKUP, MAP.lookup(&k) ? 0 : -2);
	count(probe, OP_DELETE, MAP.delete(&k));
}

/*
 * One entry point per probe slot.  The context is not read, so the same
 * functions load as kprobe programs (on a spin_unlock function) or as
 * tracepoint programs (lock:contention_*, kmem:kmalloc/kfree).
 */
#define ON_PROBE(n) int on_probe##n(void *ctx) { exercise(n); return 0; }
ON_PROBE(0)
#if NPROBES > 1
ON_PROBE(1)
#endif
#if NPROBES > 2
ON_PROBE(2)
#endif
#if NPROBES > 3
ON_PROBE(3)
#endif
#if NPROBES > 4
ON_PROBE(4)
#endif
#if NPROBES > 5
ON_PROBE(5)
#endif
#if NPROBES > 6
ON_PROBE(6)
#endif
#if NPROBES > 7
ON_PROBE(7)
#endif
