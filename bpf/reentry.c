/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pybpfmap stress, the re-entry scenario: two programs of types that can nest
 * update one key of one map, one while the other is inside its update.
 *
 *   outer  raw_tp sys_enter, only for process PID and syscall NR: updates key
 *          K of MAP (then deletes it, so that every update inserts a new
 *          element); a per-CPU flag says "the outer program is inside update".
 *   inner  a kprobe on a function that runs while the bucket lock is held
 *          (pybpfmap/stress/reentry.py picks it per kernel): when the flag is
 *          set, it updates the same key of the same map.
 *
 * raw_tp programs do not take bpf_prog_active, so the kprobe program runs
 * inside the outer update (kprobe programs never nest into each other).  What
 * the inner update gets is the point: an AA deadlock on the bucket lock
 * before Linux kernel commit 20b6cc34ea74 ("bpf: Avoid hashtab deadlock with
 * map_locked") (in v5.11), -EBUSY after it, -EDEADLK/-ETIMEDOUT after Linux
 * kernel commit 4fa8d68aa53e ("bpf: Convert hashtab.c to rqspinlock") (in v6.15).
 *
 * Parameters (-D): MAP_* (pybpfmap_map.h), PID, NR, NERRNO (as in stress.c).
 * Counters: outer_counts[slot], inner_counts[slot] (slot = -ret, 0 = success,
 * the last slot for anything beyond), inner_fired[0] = times the inner program
 * ran while the outer one was inside its update.
 */
#include <uapi/linux/ptrace.h>
#include "pybpfmap_map.h"

PYBPFMAP_MAP(MAP);

BPF_PERCPU_ARRAY(outer_counts, u64, NERRNO);
BPF_PERCPU_ARRAY(inner_counts, u64, NERRNO);
BPF_PERCPU_ARRAY(inner_fired, u64, 1);
BPF_PERCPU_ARRAY(in_outer, u32, 1);
BPF_PERCPU_ARRAY(reentry_value, struct MAP_value, 1);

static __always_inline void count_ret(int outer, long ret)
{
	u32 slot = ret < 0 ? (u32)-ret : 0;
	u64 *c;

	if (slot >= NERRNO)
		slot = NERRNO - 1;
	c = outer ? outer_counts.lookup(&slot) : inner_counts.lookup(&slot);
	if (c)
		*c += 1;
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
	struct MAP_key k = {};
	struct MAP_value *v;
	u32 zero = 0, one = 1;
	u32 *flag;
	long ret;

	if (ctx->args[1] != NR || (bpf_get_current_pid_tgid() >> 32) != PID)
		return 0;
	flag = in_outer.lookup(&zero);
	v = reentry_value.lookup(&zero);
	if (!flag || !v)
		return 0;
	__builtin_memcpy(k.b, &one, sizeof(one) < sizeof(k.b) ? sizeof(one) : sizeof(k.b));
	*flag = 1;
	ret = MAP.update(&k, v);
	*flag = 0;
	MAP.delete(&k);
	count_ret(1, ret);
	return 0;
}

int inner(struct pt_regs *ctx)
{
	struct MAP_key k = {};
	struct MAP_value *v;
	u32 zero = 0, one = 1;
	u32 *flag;
	u64 *fired;

	if ((bpf_get_current_pid_tgid() >> 32) != PID)
		return 0;
	flag = in_outer.lookup(&zero);
	if (!flag || !*flag)
		return 0;
	fired = inner_fired.lookup(&zero);
	if (fired)
		*fired += 1;
	v = reentry_value.lookup(&zero);
	if (!v)
		return 0;
	__builtin_memcpy(k.b, &one, sizeof(one) < sizeof(k.b) ? sizeof(one) : sizeof(k.b));
	count_ret(0, MAP.update(&k, v));
	return 0;
}
