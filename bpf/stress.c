/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap stress: a handler for lock-path events (a kprobe on a spin_unlock
 * function, or the weaker tracepoint variant) that runs update -> lookup ->
 * delete on one map of every type x allocation mode and counts each result
 * per errno, per probe and per map, in a per-CPU array.
 *
 * The idea is the one behind Linux kernel commit 6c9059817432 ("bpf:
 * pre-allocate hash map elements") (in v4.6) and samples/bpf/spintest: a map
 * update from inside a lock path must neither deadlock nor allocate in a way
 * that re-enters the lock.
 *
 * Parameters (-D, from pybpfmap/stress/programs.py):
 *   HP, HN, PP, PN, LP, LQ  the six maps (pybpfmap_map.h, MapSpec.cflags):
 *       hash prealloc / no_prealloc, percpu_hash prealloc / no_prealloc,
 *       lru_hash prealloc, lru_percpu_hash prealloc.  LRU maps exist only
 *       preallocated (the kernel refuses BPF_F_NO_PREALLOC for them).
 *   USE_HP ... USE_LQ       1 to exercise that map, 0 to leave it idle.
 *   NPROBES                 number of handler slots (on_probe0..on_probe3).
 *
 * Counter index: ((probe * NMAPS + map) * NOPS + op) * NSLOTS + slot;
 * the slot for each errno is listed in pybpfmap/stress/programs.py (SLOTS).
 */
#include <uapi/linux/ptrace.h>
#include "pybpfmap_map.h"

#define NPROBES 4
#define NMAPS 6
#define NOPS 3
#define NSLOTS 12

#define OP_UPDATE 0
#define OP_LOOKUP 1
#define OP_DELETE 2

PYBPFMAP_MAP(HP);
PYBPFMAP_MAP(HN);
PYBPFMAP_MAP(PP);
PYBPFMAP_MAP(PN);
PYBPFMAP_MAP(LP);
PYBPFMAP_MAP(LQ);

BPF_PERCPU_ARRAY(stress_counts, u64, NPROBES * NMAPS * NOPS * NSLOTS);
/* Last errno outside the known slots, per (probe, map, op). */
BPF_ARRAY(stress_errno, s32, NPROBES * NMAPS * NOPS);

/* Keep in step with SLOTS in pybpfmap/stress/programs.py. */
static __always_inline u32 slot_of(int ret)
{
	switch (ret) {
	case 0: return 0;
	case -2: return 1;    /* ENOENT */
	case -16: return 2;   /* EBUSY */
	case -35: return 3;   /* EDEADLK */
	case -110: return 4;  /* ETIMEDOUT */
	case -12: return 5;   /* ENOMEM */
	case -7: return 6;    /* E2BIG */
	case -17: return 7;   /* EEXIST */
	case -22: return 8;   /* EINVAL */
	case -11: return 9;   /* EAGAIN */
	case -524: return 10; /* ENOTSUPP */
	default: return 11;   /* other: see stress_errno */
	}
}

static __always_inline void count(u32 probe, u32 map, u32 op, int ret)
{
	u32 slot = slot_of(ret);
	u32 idx = ((probe * NMAPS + map) * NOPS + op) * NSLOTS + slot;
	u64 *c = stress_counts.lookup(&idx);

	if (c)
		*c += 1;
	if (slot == NSLOTS - 1) {
		u32 o = (probe * NMAPS + map) * NOPS + op;
		s32 *e = stress_errno.lookup(&o);

		if (e)
			*e = ret;
	}
}

/*
 * One block per map: BCC rewrites map method calls, so they cannot sit in a
 * macro; they are written out.  A lookup has no errno: found is 0, missing
 * is -ENOENT.  The key is the CPU number, so the three operations on one CPU
 * work on one element and different CPUs share the bucket array.
 */
static __always_inline void exercise(u32 probe)
{
	u32 cpu = bpf_get_smp_processor_id();
	u64 now = bpf_ktime_get_ns();
	int ret;

#if USE_HP
	{
		struct HP_key k = {};
		struct HP_value v = {};

		__builtin_memcpy(k.b, &cpu, sizeof(cpu));
		__builtin_memcpy(v.b, &now, sizeof(now) < sizeof(v.b) ? sizeof(now) : sizeof(v.b));
		count(probe, 0, OP_UPDATE, HP.update(&k, &v));
		count(probe, 0, OP_LOOKUP, HP.lookup(&k) ? 0 : -2);
		count(probe, 0, OP_DELETE, HP.delete(&k));
	}
#endif
#if USE_HN
	{
		struct HN_key k = {};
		struct HN_value v = {};

		__builtin_memcpy(k.b, &cpu, sizeof(cpu));
		__builtin_memcpy(v.b, &now, sizeof(now) < sizeof(v.b) ? sizeof(now) : sizeof(v.b));
		count(probe, 1, OP_UPDATE, HN.update(&k, &v));
		count(probe, 1, OP_LOOKUP, HN.lookup(&k) ? 0 : -2);
		count(probe, 1, OP_DELETE, HN.delete(&k));
	}
#endif
#if USE_PP
	{
		struct PP_key k = {};
		struct PP_value v = {};

		__builtin_memcpy(k.b, &cpu, sizeof(cpu));
		__builtin_memcpy(v.b, &now, sizeof(now) < sizeof(v.b) ? sizeof(now) : sizeof(v.b));
		count(probe, 2, OP_UPDATE, PP.update(&k, &v));
		count(probe, 2, OP_LOOKUP, PP.lookup(&k) ? 0 : -2);
		count(probe, 2, OP_DELETE, PP.delete(&k));
	}
#endif
#if USE_PN
	{
		struct PN_key k = {};
		struct PN_value v = {};

		__builtin_memcpy(k.b, &cpu, sizeof(cpu));
		__builtin_memcpy(v.b, &now, sizeof(now) < sizeof(v.b) ? sizeof(now) : sizeof(v.b));
		count(probe, 3, OP_UPDATE, PN.update(&k, &v));
		count(probe, 3, OP_LOOKUP, PN.lookup(&k) ? 0 : -2);
		count(probe, 3, OP_DELETE, PN.delete(&k));
	}
#endif
#if USE_LP
	{
		struct LP_key k = {};
		struct LP_value v = {};

		__builtin_memcpy(k.b, &cpu, sizeof(cpu));
		__builtin_memcpy(v.b, &now, sizeof(now) < sizeof(v.b) ? sizeof(now) : sizeof(v.b));
		count(probe, 4, OP_UPDATE, LP.update(&k, &v));
		count(probe, 4, OP_LOOKUP, LP.lookup(&k) ? 0 : -2);
		count(probe, 4, OP_DELETE, LP.delete(&k));
	}
#endif
#if USE_LQ
	{
		struct LQ_key k = {};
		struct LQ_value v = {};

		__builtin_memcpy(k.b, &cpu, sizeof(cpu));
		__builtin_memcpy(v.b, &now, sizeof(now) < sizeof(v.b) ? sizeof(now) : sizeof(v.b));
		count(probe, 5, OP_UPDATE, LQ.update(&k, &v));
		count(probe, 5, OP_LOOKUP, LQ.lookup(&k) ? 0 : -2);
		count(probe, 5, OP_DELETE, LQ.delete(&k));
	}
#endif
}

/*
 * One entry point per probe slot.  The context is not read, so the same
 * functions load as kprobe programs (on a spin_unlock function) or as
 * tracepoint programs (lock:contention_*, kmem:kmalloc/kfree).
 */
int on_probe0(void *ctx) { exercise(0); return 0; }
int on_probe1(void *ctx) { exercise(1); return 0; }
int on_probe2(void *ctx) { exercise(2); return 0; }
int on_probe3(void *ctx) { exercise(3); return 0; }
