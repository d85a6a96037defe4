/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap stress, the writers scenario: a program inserts keys into a map
 * while user-space writers (one process per CPU) update, delete and
 * batch-delete keys of the same range with bpf(2).
 *
 *   inserters raw_tp sys_enter, only for process PID and syscall NR (pinned
 *             by user space to one CPU: process context), and xdp_inserter,
 *             generic XDP on the veth workload's traffic (the NET_RX softirq):
 *             each inserts key (its per-CPU counter % KEYS) with BPF_NOEXIST
 *             and times the call with bpf_ktime_get_ns() into log2 slots and
 *             a maximum;
 *   guard     a kprobe on the map type's update function (user space picks
 *             and attaches it): counts its runs in the writer processes (their
 *             tgids in writer_tgids, filled by user space) and elsewhere.  It
 *             never touches MAP: it runs inside the inserter's update, and a
 *             nested update there is the re-entry scenario's deadlock on 5.10.
 *
 * A bpf(2) map update runs with bpf_prog_active raised
 * (bpf_disable_instrumentation() in kernel/bpf/syscall.c), so the guard is
 * skipped inside the writers: its runs there should stay 0, and the skips show
 * in recursion_misses since Linux kernel commit dd8657894c11 ("bpf: Count
 * missed stats in trace_call_bpf") (in v6.7).
 *
 * Parameters (-D): MAP_* (pybpfmap_map.h), PID, NR, NERRNO, NSLOTS, KEYS,
 * MAX_WRITERS.  Counters (per CPU), per inserter ("side": 0 raw_tp, 1 XDP):
 * insert_counts[side * NERRNO + slot] (slot = -ret, 0 = success, the last slot
 * for anything beyond), insert_lat[side * NSLOTS + log2 ns], insert_max[side];
 * guard_runs[0] (in a writer), guard_runs[1] (elsewhere).
 */
#include <uapi/linux/ptrace.h>
#include "pybpfmap_map.h"

PYBPFMAP_MAP(MAP);
#include "pybpfmap_count.h"

#define SIDES 2     /* the inserters: 0 raw_tp (process context), 1 XDP (softirq) */

BPF_PERCPU_ARRAY(insert_counts, u64, SIDES * NERRNO);
BPF_PERCPU_ARRAY(insert_lat, u64, SIDES * NSLOTS);
BPF_PERCPU_ARRAY(insert_max, u64, SIDES);
BPF_PERCPU_ARRAY(key_counter, u32, SIDES);
BPF_PERCPU_ARRAY(scratch_value, struct MAP_value, 1);
BPF_PERCPU_ARRAY(guard_runs, u64, 2);
BPF_HASH(writer_tgids, u32, u32, MAX_WRITERS);   /* set by user space */
BPF_PERCPU_ARRAY(in_xdp, u32, 1);                /* the XDP inserter is running */

/* One insert of inserter SIDE: key (its per-CPU counter % KEYS), timed. */
static __always_inline void insert(u32 side)
{
	struct MAP_key k = {};
	struct MAP_value *v;
	u32 zero = 0, slot;
	u32 *next;
	u64 t0, dt;
	long ret;

	next = key_counter.lookup(&side);
	v = scratch_value.lookup(&zero);
	if (!next || !v)
		return;
	set_key(&k, *next % KEYS);
	*next += 1;
	t0 = bpf_ktime_get_ns();
	ret = MAP.insert(&k, v);        /* BCC: bpf_map_update_elem(..., BPF_NOEXIST) */
	dt = bpf_ktime_get_ns() - t0;
	slot = side * NERRNO + slot_of(ret);
	bump(insert_counts.lookup(&slot));
	slot = side * NSLOTS + log2_slot(dt);
	bump(insert_lat.lookup(&slot));
	raise_to(insert_max.lookup(&side), dt);
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
	if (ctx->args[1] != NR || (bpf_get_current_pid_tgid() >> 32) != PID)
		return 0;
	insert(0);
	return 0;
}

int xdp_inserter(struct xdp_md *ctx)
{
	u32 zero = 0;
	u32 *flag = in_xdp.lookup(&zero);

	/* softirq runs on whatever task is current, a writer's too: the guard must
	 * not take this insert for one inside a writer's bpf(2) update */
	if (flag)
		*flag = 1;
	insert(1);
	if (flag)
		*flag = 0;
	return XDP_PASS;
}

/* Not "guard": since Linux 6.5 <linux/cleanup.h> defines guard() as a macro. */
int update_guard(struct pt_regs *ctx)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32, zero = 0;
	u32 *xdp = in_xdp.lookup(&zero);
	u32 slot = writer_tgids.lookup(&tgid) && !(xdp && *xdp) ? 0 : 1;

	bump(guard_runs.lookup(&slot));
	return 0;
}
