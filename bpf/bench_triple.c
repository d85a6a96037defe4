/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap bench: the update -> lookup -> delete triple of
 * samples/bpf/map_perf_test on one hash map MAP (a MapSpec, see
 * pybpfmap_map.h), on a random key below MAP_MAX_ENTRIES.
 *
 * Defines (all through -D):
 *   TRIPLES   triples per program run (default 1, as in the seed's figures;
 *             map_perf_test does 10 since Linux kernel commit 89dc8d0c38e0
 *             ("samples/bpf: Reduce syscall overhead in map_perf_test.") (in v6.1))
 *   TRIGGER_RAW_TP_NR  for the raw tracepoint trigger: only count sys_enter
 *             events for this syscall number
 *
 * Entry points, identical work whatever the map flags are:
 *   bench_triple / bench_empty   skb programs (SCHED_CLS) for BPF_PROG_TEST_RUN
 *   trig_triple / trig_empty     syscall-triggered (kprobe, tracepoint, raw_tp);
 *                                the loader attaches one of them
 */
#include "pybpfmap_map.h"

#ifndef TRIPLES
#define TRIPLES 1
#endif

PYBPFMAP_MAP(MAP);

/* Events seen by the syscall-triggered programs, one slot per CPU. */
BPF_PERCPU_ARRAY(events, u64, 1);

static __always_inline void triples(void)
{
	struct MAP_key key = {};
	struct MAP_value val = {};
	struct MAP_value *v;
	u32 k;
	int i;

	for (i = 0; i < TRIPLES; i++) {
		k = bpf_get_prandom_u32() % MAP_MAX_ENTRIES;
		__builtin_memcpy(key.b, &k, sizeof(k) < MAP_KEY_SIZE ? sizeof(k) : MAP_KEY_SIZE);
		MAP.update(&key, &val);
		v = MAP.lookup(&key);
		if (v)
			val.b[0] = v->b[0];
		MAP.delete(&key);
	}
}

static __always_inline void count(void)
{
	int zero = 0;
	u64 *n = events.lookup(&zero);

	if (n)
		*n += 1;
}

int bench_triple(struct __sk_buff *skb)
{
	triples();
	return 0;
}

int bench_empty(struct __sk_buff *skb)
{
	return 0;
}

#ifdef TRIGGER_RAW_TP_NR
/* raw_tracepoint/sys_enter: args[1] is the syscall number. */
static __always_inline int ours(struct bpf_raw_tracepoint_args *ctx)
{
	return ctx->args[1] == TRIGGER_RAW_TP_NR;
}
#define TRIG_CTX struct bpf_raw_tracepoint_args *ctx
#else
#define ours(ctx) 1
#define TRIG_CTX void *ctx
#endif

int trig_triple(TRIG_CTX)
{
	if (!ours(ctx))
		return 0;
	triples();
	count();
	return 0;
}

int trig_empty(TRIG_CTX)
{
	if (!ours(ctx))
		return 0;
	count();
	return 0;
}
