/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap allocation ledger: the kmalloc and per-CPU memory that one
 * process's bpf(2) calls leave allocated, from the allocators' own
 * tracepoints (pybpfmap/ledger.py says why and what is not seen).
 *
 *   sys_enter / sys_exit   a thread of process TGID entering bpf(2) (NR_BPF)
 *                          is flagged in in_bpf until its next syscall exit;
 *                          commands MAP_LOOKUP_ELEM, MAP_GET_NEXT_KEY and
 *                          OBJ_GET_INFO_BY_FD are not followed (the ledger
 *                          reads itself with them).
 *   kmalloc(_node), percpu_alloc_percpu
 *                          an allocation by a flagged thread is remembered by
 *                          its address in live (size, call site, kind) and
 *                          added to the counters;
 *   kfree, percpu_free_percpu
 *                          a remembered address freed in any context (RCU
 *                          callbacks run in softirq) is subtracted, forgotten.
 *
 * Raw tracepoints, not perf tracepoint programs: before v5.11 bpf(2) wraps
 * every map update and delete in bpf_disable_instrumentation(), which raises
 * bpf_prog_active, and trace_call_bpf() then skips every tracepoint program
 * on that CPU; raw tracepoint programs do not look at bpf_prog_active.  Raw
 * tracepoints see the TP_PROTO arguments; their positions are the format
 * file's field order (the same for these events in 5.10 and 6.1 headers),
 * passed in as -D.  Every map here is preallocated: the ledger never
 * allocates while it runs.
 *
 * Parameters (-D):
 *   TGID, NR_BPF              the process followed, __NR_bpf
 *   LIVE_ENTRIES, SITE_ENTRIES, THREAD_ENTRIES   table sizes
 *   NCPUS                     possible CPUs
 *   KMALLOC_SITE, KMALLOC_PTR, KMALLOC_BYTES     arg positions in kmem:kmalloc
 *   HAVE_KMALLOC_NODE, KMALLOC_NODE_SITE/_PTR/_BYTES   kmem:kmalloc_node (< 6.1)
 *   KFREE_PTR                 in kmem:kfree
 *   PCPU_SITE (-1: none, < 6.0), PCPU_SIZE, PCPU_PTR, PCPU_BYTES (-1: none)
 *   PCPU_FREE_PTR             in percpu:percpu_free_percpu
 * Counters (stats[]): see the ST_ names; pybpfmap/ledger.py mirrors them.
 */
#include <uapi/linux/ptrace.h>

#define KIND_KMALLOC 0
#define KIND_PERCPU 1

#define ST_KMALLOC 0     /* live kmalloc bytes */
#define ST_PERCPU 1      /* live per-CPU bytes (all CPUs) */
#define ST_PEAK 2        /* running peak of ST_KMALLOC + ST_PERCPU */
#define ST_DROPPED 3     /* allocations not remembered: live is full */
#define ST_LOST_CALLS 4  /* bpf(2) calls not followed: in_bpf is full */
#define ST_ALLOCS 5      /* allocations remembered */
#define ST_FREES 6       /* remembered allocations freed */
#define ST_ARMED 7       /* set by user space once loading is over */
#define NSTATS 8

#define CMD_MAP_LOOKUP_ELEM 1
#define CMD_MAP_GET_NEXT_KEY 4
#define CMD_OBJ_GET_INFO_BY_FD 15
#define SITE_UNKNOWN 0   /* percpu_alloc_percpu has no call_site before 6.0 */

struct alloc {
	u64 site;
	u32 bytes;
	u32 kind;
};

struct site_stat {
	u64 bytes;
	u64 count;
};

BPF_HASH(in_bpf, u32, u8, THREAD_ENTRIES);
BPF_HASH(live, u64, struct alloc, LIVE_ENTRIES);
BPF_HASH(sites, u64, struct site_stat, SITE_ENTRIES);
BPF_ARRAY(stats, u64, NSTATS);

static __always_inline void stat_add(u32 idx, u64 delta)
{
	u64 *v = stats.lookup(&idx);

	if (v)
		__sync_fetch_and_add(v, delta);
}

static __always_inline u64 stat_get(u32 idx)
{
	u64 *v = stats.lookup(&idx);

	return v ? *v : 0;
}

/* Racy by design: two CPUs may both read the sum and the later store wins,
 * so the peak can miss a concurrent allocation's bytes. */
static __always_inline void update_peak(void)
{
	u64 sum = stat_get(ST_KMALLOC) + stat_get(ST_PERCPU);
	u32 idx = ST_PEAK;
	u64 *peak = stats.lookup(&idx);

	if (peak && (s64)sum > (s64)*peak)
		*peak = sum;
}

static __always_inline void site_add(u64 site, s64 bytes, s64 count)
{
	struct site_stat zero = {}, *s;

	s = sites.lookup(&site);
	if (!s) {
		sites.insert(&site, &zero);
		s = sites.lookup(&site);
		if (!s)
			return;
	}
	__sync_fetch_and_add(&s->bytes, bytes);
	__sync_fetch_and_add(&s->count, count);
}

static __always_inline void forget(u64 ptr)
{
	struct alloc *a = live.lookup(&ptr);
	struct alloc old;

	if (!a)
		return;
	old = *a;
	if (live.delete(&ptr) != 0)
		return;	/* a concurrent free of the same address won */
	stat_add(old.kind == KIND_PERCPU ? ST_PERCPU : ST_KMALLOC, -(s64)old.bytes);
	site_add(old.site, -(s64)old.bytes, -1);
	stat_add(ST_FREES, 1);
}

static __always_inline void remember(u64 ptr, u64 bytes, u64 site, u32 kind)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	struct alloc a = {};

	if ((id >> 32) != TGID || ptr <= 16 || !bytes)	/* NULL, ZERO_SIZE_PTR */
		return;
	if (!in_bpf.lookup(&tid))
		return;
	/* An address still remembered was freed where the ledger did not see
	 * it: forget the old allocation before recording the new one. */
	forget(ptr);
	a.site = site;
	a.bytes = bytes;
	a.kind = kind;
	if (live.update(&ptr, &a) != 0) {
		stat_add(ST_DROPPED, 1);
		return;
	}
	stat_add(kind == KIND_PERCPU ? ST_PERCPU : ST_KMALLOC, bytes);
	site_add(site, bytes, 1);
	stat_add(ST_ALLOCS, 1);
	update_peak();
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	struct pt_regs *regs;
	unsigned long cmd = 0;
	u8 one = 1;

	if ((id >> 32) != TGID || ctx->args[1] != NR_BPF || !stat_get(ST_ARMED))
		return 0;
	regs = (struct pt_regs *)ctx->args[0];
	bpf_probe_read_kernel(&cmd, sizeof(cmd), &PT_REGS_PARM1(regs));
	if (cmd == CMD_MAP_LOOKUP_ELEM || cmd == CMD_MAP_GET_NEXT_KEY ||
	    cmd == CMD_OBJ_GET_INFO_BY_FD)
		return 0;
	if (in_bpf.update(&tid, &one) != 0)
		stat_add(ST_LOST_CALLS, 1);
	return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;

	if ((id >> 32) == TGID)
		in_bpf.delete(&tid);
	return 0;
}

RAW_TRACEPOINT_PROBE(kmalloc)
{
	remember(ctx->args[KMALLOC_PTR], ctx->args[KMALLOC_BYTES], ctx->args[KMALLOC_SITE],
		 KIND_KMALLOC);
	return 0;
}

#ifdef HAVE_KMALLOC_NODE
RAW_TRACEPOINT_PROBE(kmalloc_node)
{
	remember(ctx->args[KMALLOC_NODE_PTR], ctx->args[KMALLOC_NODE_BYTES],
		 ctx->args[KMALLOC_NODE_SITE], KIND_KMALLOC);
	return 0;
}
#endif

RAW_TRACEPOINT_PROBE(kfree)
{
	forget(ctx->args[KFREE_PTR]);
	return 0;
}

RAW_TRACEPOINT_PROBE(percpu_alloc_percpu)
{
#if PCPU_BYTES >= 0
	u64 bytes = ctx->args[PCPU_BYTES];
#else
	/* Every chunk has one unit per possible CPU: the size is taken in each. */
	u64 bytes = ctx->args[PCPU_SIZE] * NCPUS;
#endif
#if PCPU_SITE >= 0
	u64 site = ctx->args[PCPU_SITE];
#else
	u64 site = SITE_UNKNOWN;
#endif
	remember(ctx->args[PCPU_PTR], bytes, site, KIND_PERCPU);
	return 0;
}

RAW_TRACEPOINT_PROBE(percpu_free_percpu)
{
	forget(ctx->args[PCPU_FREE_PTR]);
	return 0;
}
