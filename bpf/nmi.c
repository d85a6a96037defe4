/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap stress, the NMI scenario: map updates in NMI context while other
 * programs of the same map hold its bucket lock.
 *
 *   holder  raw_tp sys_enter, only for process PID and syscall NR (process
 *           context, pinned by user space to one CPU): updates key HOLD_KEY of
 *           MAP, then deletes it, so that the bucket lock is taken twice a call;
 *   xdp_holder  the same for every packet of the veth workload, in the NET_RX
 *           softirq (user space attaches it, generic XDP, where it can);
 *   nmi     a tracepoint program on nmi:nmi_handler, which runs in NMI context:
 *           while ARMED, updates key NMI_KEY of MAP and times the call with
 *           bpf_ktime_get_ns() (NMI-safe) into log2 slots and a maximum.
 *
 * Neither holder takes bpf_prog_active (raw_tp and XDP programs do not), so
 * an NMI that lands while one is inside its update runs the nmi
 * program there, on a CPU that holds the bucket lock: an AA deadlock before
 * Linux kernel commit 20b6cc34ea74 ("bpf: Avoid hashtab deadlock with
 * map_locked") (in v5.11), -EBUSY after it, -EDEADLK (or -ETIMEDOUT) after
 * Linux kernel commit 4fa8d68aa53e ("bpf: Convert hashtab.c to rqspinlock")
 * (in v6.15).  NMI_KEY == HOLD_KEY is the same-key row; a different key in the
 * same bucket whose map_locked slot differs is the other row (user space picks
 * it from the hash with BPF_F_ZERO_SEED).
 *
 * Parameters (-D): MAP_* (pybpfmap_map.h), PID, NR, NERRNO, NSLOTS, HOLD_KEY,
 * NMI_KEY.  Counters (per CPU): holder_counts[slot], xdp_counts[slot],
 * nmi_counts[slot] (slot = -ret, 0 = success, the last slot for anything
 * beyond), nmi_inside[slot] (the same, for NMIs that landed while a holder was
 * inside its update or delete), nmi_runs[0] (runs while armed),
 * nmi_lat[log2 ns], nmi_max[0].
 */
#include <uapi/linux/ptrace.h>
#include "pybpfmap_map.h"

PYBPFMAP_MAP(MAP);
#include "pybpfmap_count.h"

BPF_PERCPU_ARRAY(holder_counts, u64, NERRNO);
BPF_PERCPU_ARRAY(xdp_counts, u64, NERRNO);
BPF_PERCPU_ARRAY(nmi_counts, u64, NERRNO);
BPF_PERCPU_ARRAY(nmi_inside, u64, NERRNO);
BPF_PERCPU_ARRAY(nmi_runs, u64, 1);
BPF_PERCPU_ARRAY(nmi_lat, u64, NSLOTS);
BPF_PERCPU_ARRAY(nmi_max, u64, 1);
BPF_PERCPU_ARRAY(holding, u32, 1);      /* a holder is inside its update/delete */
BPF_ARRAY(armed, u32, 1);               /* set by user space */
BPF_PERCPU_ARRAY(scratch_value, struct MAP_value, 1);

/* One holder's turn: update then delete HOLD_KEY, marked as holding. */
static __always_inline long hold(void)
{
	struct MAP_key k = {};
	struct MAP_value *v;
	u32 zero = 0, prev;
	u32 *flag;
	long ret;

	flag = holding.lookup(&zero);
	v = scratch_value.lookup(&zero);
	if (!flag || !v)
		return 0;
	set_key(&k, HOLD_KEY);
	prev = *flag;
	*flag = 1;
	ret = MAP.update(&k, v);
	MAP.delete(&k);
	*flag = prev;
	return ret;
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
	long ret;
	u32 slot;

	if (ctx->args[1] != NR || (bpf_get_current_pid_tgid() >> 32) != PID)
		return 0;
	ret = hold();
	slot = slot_of(ret);
	bump(holder_counts.lookup(&slot));
	return 0;
}

int xdp_holder(struct xdp_md *ctx)
{
	long ret = hold();
	u32 slot = slot_of(ret);

	bump(xdp_counts.lookup(&slot));
	return XDP_PASS;
}

TRACEPOINT_PROBE(nmi, nmi_handler)
{
	struct MAP_key k = {};
	struct MAP_value *v;
	u32 zero = 0, slot;
	u32 *on, *flag;
	u64 t0, dt;
	long ret;

	on = armed.lookup(&zero);
	if (!on || !*on)
		return 0;
	flag = holding.lookup(&zero);
	v = scratch_value.lookup(&zero);
	if (!flag || !v)
		return 0;
	bump(nmi_runs.lookup(&zero));
	set_key(&k, NMI_KEY);
	t0 = bpf_ktime_get_ns();
	ret = MAP.update(&k, v);
	dt = bpf_ktime_get_ns() - t0;
	slot = slot_of(ret);
	bump(nmi_counts.lookup(&slot));
	if (*flag)
		bump(nmi_inside.lookup(&slot));
	slot = log2_slot(dt);
	bump(nmi_lat.lookup(&slot));
	raise_to(nmi_max.lookup(&zero), dt);
	return 0;
}
