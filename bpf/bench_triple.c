/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap bench: the update -> lookup -> delete triple of
 * samples/bpf/map_perf_test on one hash map MAP (a MapSpec, see
 * pybpfmap_map.h), with every run counted and every failure kept.
 *
 * Defines (all through -D, see pybpfmap/bench/program.py):
 *   INKERNEL_TRIPLES  triples per run of the BPF_PROG_TEST_RUN programs
 *   SYSCALL_TRIPLES   triples per run of the syscall-triggered programs (one
 *                     run = one event; map_perf_test does 10 since Linux kernel
 *                     commit 89dc8d0c38e0 ("samples/bpf: Reduce syscall
 *                     overhead in map_perf_test.") (in v6.1), 1 before)
 *   KEY_TID           key = the current thread id, read once per event, as
 *                     map_perf_test does; else a random key in this CPU's own
 *                     slice of the key space, for every triple:
 *   KEY_BASE, KEY_RANGE  key = KEY_BASE + cpu * KEY_RANGE + random % KEY_RANGE.
 *                     User space preloads resident keys below KEY_BASE (--fill),
 *                     so the triple's keys never touch them, and two CPUs never
 *                     pick the same key (a collision would show as ENOENT).
 *   TRIGGER_RAW_TP_NR for the raw tracepoint trigger: only sys_enter events of
 *                     this syscall number are ours
 *   MAP_PINNED        the bpffs path of a map user space made: use it instead
 *                     of creating one (so that the map, not the compiler, is
 *                     what its memory cgroup holds)
 *
 * Entry points: bench_triple / bench_empty (SCHED_CLS, for BPF_PROG_TEST_RUN)
 * and trig_triple / trig_empty (kprobe, tracepoint or raw_tp).  The empty
 * programs do everything the triple programs do — the counter lookup, the key
 * generation (bpf_get_prandom_u32, modulo, key copy) into a sink, the event
 * count — except the three map calls, so the difference is the map's cost.
 *
 * COUNTS (one per-CPU slot) holds what user space reads after every window:
 * program runs (events), the sink, and the failures of each map call by
 * errno.  User space reads the map calls (the OP_* defines) and the errno
 * slots (slot()'s "case ERRNO: return N;") from this file
 * (pybpfmap/bench/program.py, layout()): they are listed here only.
 */
#include <linux/errno.h>
#include "pybpfmap_map.h"

#ifndef INKERNEL_TRIPLES
#define INKERNEL_TRIPLES 100
#endif
#ifndef SYSCALL_TRIPLES
#define SYSCALL_TRIPLES 1
#endif
#ifndef KEY_BASE
#define KEY_BASE 0x80000000u
#endif
#ifndef KEY_RANGE
#define KEY_RANGE MAP_MAX_ENTRIES
#endif

#define NSLOTS 16
#define OP_UPDATE 0
#define OP_LOOKUP 1
#define OP_DELETE 2
#define NOPS 3

PYBPFMAP_USER_MAP(MAP);

struct counts {
	u64 events;			/* program runs */
	u64 sink;			/* the keys, xor-ed: the empty programs' key work */
	u64 fail[NOPS][NSLOTS];		/* failed map calls, by errno slot */
};

BPF_PERCPU_ARRAY(COUNTS, struct counts, 1);

/* The slot of a negative errno (0: any other errno). */
static __always_inline int slot(long err)
{
	switch (-err) {
	case E2BIG: return 1;
	case ENOMEM: return 2;
	case EBUSY: return 3;
	case ENOENT: return 4;
	case EEXIST: return 5;
	case EINVAL: return 6;
	case EDEADLK: return 7;
	case ETIMEDOUT: return 8;
	case EAGAIN: return 9;
	case ENOTSUPP: return 10;
	case EFAULT: return 11;
	case EPERM: return 12;
	case ENOSPC: return 13;
	case EOPNOTSUPP: return 14;
	case EINTR: return 15;
	default: return 0;
	}
}

#ifdef KEY_TID
/* map_perf_test's key: the thread id, read once per event. */
#define KEY_SEED() ((u32)bpf_get_current_pid_tgid())
#define KEY_OF(seed) (seed)
#else
/* A random key in this CPU's slice, for every triple. */
#define KEY_SEED() (bpf_get_smp_processor_id())
#define KEY_OF(cpu) (KEY_BASE + (cpu) * KEY_RANGE + bpf_get_prandom_u32() % KEY_RANGE)
#endif

#if MAP_VALUE_SIZE > 256
/* A value this big does not fit beside the rest in the 512-byte BPF stack:
 * it lives in a per-CPU slot (one lookup per run, in both programs). */
BPF_PERCPU_ARRAY(VALUE_SLOT, struct MAP_value, 1);
#define BIG_VALUE 1
#endif

/* One program run: n triples (with_map) or only their key work. */
static __always_inline int run(const int n, const int with_map)
{
	struct MAP_key key = {};
	struct MAP_value *v;
	struct counts *c;
	u64 sink = 0;
	int zero = 0, i;
	long ret;
	u32 seed = KEY_SEED();
	u32 k;
#ifdef BIG_VALUE
	struct MAP_value *valp = VALUE_SLOT.lookup(&zero);
#else
	struct MAP_value val = {}, *valp = &val;
#endif

	c = COUNTS.lookup(&zero);
	if (!c || !valp)
		return 0;
	for (i = 0; i < n; i++) {
		k = KEY_OF(seed);
		sink ^= k;
		if (!with_map)
			continue;
		__builtin_memcpy(key.b, &k, sizeof(k) < MAP_KEY_SIZE ? sizeof(k) : MAP_KEY_SIZE);
		ret = MAP.update(&key, valp);
		if (ret)
			c->fail[OP_UPDATE][slot(ret)]++;
		v = MAP.lookup(&key);
		if (v)
			valp->b[0] = v->b[0];
		else
			c->fail[OP_LOOKUP][slot(-ENOENT)]++;
		ret = MAP.delete(&key);
		if (ret)
			c->fail[OP_DELETE][slot(ret)]++;
	}
	c->sink ^= sink;
	c->events++;
	return 0;
}

int bench_triple(struct __sk_buff *skb)
{
	return run(INKERNEL_TRIPLES, 1);
}

int bench_empty(struct __sk_buff *skb)
{
	return run(INKERNEL_TRIPLES, 0);
}

#ifdef TRIGGER_RAW_TP_NR
/* raw_tracepoint/sys_enter: args[1] is the syscall number. */
#define ours(ctx) ((ctx)->args[1] == TRIGGER_RAW_TP_NR)
#define TRIG_CTX struct bpf_raw_tracepoint_args *ctx
#else
#define ours(ctx) 1
#define TRIG_CTX void *ctx
#endif

int trig_triple(TRIG_CTX)
{
	if (!ours(ctx))
		return 0;
	return run(SYSCALL_TRIPLES, 1);
}

int trig_empty(TRIG_CTX)
{
	if (!ours(ctx))
		return 0;
	return run(SYSCALL_TRIPLES, 0);
}
