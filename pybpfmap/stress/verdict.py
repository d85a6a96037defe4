"""A row's outcome and whether the era predicted it: pure functions over records.

:func:`judge` turns a measured :class:`~pybpfmap.stress.records.StressRow`
into its outcome; :func:`from_vm` makes the row of a VM boot that never
brought one back (hung: DEADLOCK; panic, timeout, lost: FAIL).  PASS needs
all of:

* the machine stayed responsive: the heartbeat was never later than the
  limit, no workload got stuck, and the VM runner (when used) saw the guest
  finish;
* no kernel splat that the era does not explain (:func:`pybpfmap.era.expected_splats`);
* every probe fired: each probe's handler ran its map ops (a kprobe on a
  function the kernel never called is noted as not exercised, not failed, as
  long as some probe ran);
* every error is explained for this kernel era (:func:`pybpfmap.era.explain_error`;
  user space's ops, named ``user ...``: :func:`pybpfmap.era.explain_user_error`);
* the scenario's own checks pass (:meth:`~pybpfmap.stress.scenarios.Scenario.row_problems`).

Then :func:`predict` sets the era's prediction and ``as_predicted``.
"""

from __future__ import annotations

from pybpfmap import era
from pybpfmap.kfacts import KernelFacts
from pybpfmap.maps import MapSpec
from pybpfmap.splats import classify
from pybpfmap.stress import scenarios
from pybpfmap.stress.records import (
    DEADLOCK,
    FAIL,
    PASS,
    REFUSED,
    SKIPPED,
    StressRow,
    VmSummary,
    result_errno,
)
from pybpfmap.vm.outcome import Outcome, VmResult

DEFAULT_HEARTBEAT_LIMIT_S = 5.0


def spec_of(row: StressRow) -> MapSpec:
    return MapSpec(row.type, row.prealloc, 4, row.value_size)


def judge(row: StressRow, kernel: KernelFacts, kernel_log: str,
          heartbeat_limit: float = DEFAULT_HEARTBEAT_LIMIT_S) -> StressRow:
    """Set ``outcome``, ``reasons``, ``explained`` and the splats of a measured
    row, on the kernel ``kernel`` describes."""
    if row.outcome in (SKIPPED, REFUSED):
        return predict(row, kernel)
    spec = spec_of(row)
    reasons = []
    row.splats, row.excused_splats = classify(
        kernel_log, era.expected_splats(kernel, [spec]))
    reasons += [f"kernel splat ({s.kind}): {s.line.strip()}" for s in row.splats]
    if row.heartbeat_max_delay_s is None:
        reasons.append("no heartbeat measured")
    elif row.heartbeat_max_delay_s > heartbeat_limit:
        reasons.append(f"machine unresponsive: heartbeat {row.heartbeat_max_delay_s:.2f} s "
                       f"late (limit {heartbeat_limit:g} s)")
    for name, w in (row.workloads.get("stressed") or {}).items():
        if w.get("error"):
            reasons.append(f"workload {name}: {w['error']}")
        elif not w.get("ops"):
            reasons.append(f"workload {name} made no progress under the probes")
    unexercised = []
    for p in row.per_probe:
        if p.events > 0:
            continue
        if p.kprobe_hits == 0:
            # the kernel never called it under these workloads (PREEMPT_RT
            # hardly uses raw spin_unlock_bh): nothing tested, nothing failed
            unexercised.append(p.probe)
        else:
            reasons.append(f"{p.kind} {p.probe} never ran its map ops")
    if unexercised:
        note = (f"not exercised: the kernel never called {', '.join(unexercised)} under "
                "the workloads")
        row.note = f"{row.note}; {note}" if row.note else note
    if row.per_probe and row.events <= 0:
        reasons.append("no probe ran its map ops")
    reasons += scenarios.SCENARIOS.named(row.scenario).row_problems(row)
    failed_updates = sum(sum(e.values()) for op, e in row.errors.items()
                         if op in ("update", "nested update"))
    row.explained = {}
    for op, errs in row.errors.items():
        for name, n in errs.items():
            err = result_errno(name)
            if err is None:
                why = None
            elif op.startswith("user "):   # the writers scenario's bpf(2) ops
                why = era.explain_user_error(kernel, spec, op, err)
            else:
                why = era.explain_error(kernel, spec, op.split()[-1], err, failed_updates, n)
            if why is None:
                reasons.append(f"{op} returned {name} {n}x: not explained for kernel "
                               f"{kernel.release}")
            else:
                row.explained[f"{op}:{name}"] = why
    row.reasons = reasons
    row.outcome = FAIL if reasons else PASS
    return predict(row, kernel)


def predict(row: StressRow, kernel: KernelFacts) -> StressRow:
    """The era's prediction for the row, whether its outcome matches, and the
    facts it rests on (probed, or from the version) in ``prediction_why``."""
    p = scenarios.SCENARIOS.named(row.scenario).predict(kernel, spec_of(row))
    row.prediction = p.describe()
    row.prediction_why = f"{p.why} [{p.basis()}]" if p.facts else p.why
    row.prediction_commits = list(p.changes)
    row.as_predicted = (None if row.outcome == SKIPPED
                        else p.matches(row.outcome, row.counted_errnos()))
    return row


def vm_summary(vm: VmResult) -> VmSummary:
    return VmSummary(vm.outcome.label, vm.message, vm.accel, vm.kernel,
                     vm.kernel_release, str(vm.results_dir), vm.boot_seconds, vm.seconds)


def from_vm(row: StressRow, vm: VmResult, armed_at: float | None,
            kernel: KernelFacts) -> StressRow:
    """The row of a boot that brought no result back, from the runner's view:
    a hung guest (or one CPU of it) is a DEADLOCK, with the runner's vCPU
    evidence and how long after the first attach the stuck CPU stopped."""
    row.vm = vm_summary(vm)
    row.evidence = vm.evidence
    if vm.outcome is Outcome.HUNG:
        row.outcome = DEADLOCK
        row.reasons = [vm.message]
        stuck = [v.cpu for v in vm.evidence.stuck_cpus()] if vm.evidence else []
        last = [vm.last_heartbeat[c] for c in stuck if c in vm.last_heartbeat] or \
            list(vm.last_heartbeat.values())
        if armed_at is not None and last:
            row.seconds = round(max(0.0, min(last) - armed_at), 1)
        elif armed_at is None:
            row.reasons.append("the guest hung before its first probe's attach returned "
                               "(no armed mark)")
    else:
        row.outcome = FAIL
        row.reasons = [f"VM runner: {vm.message}"]
    return predict(row, kernel)


def merge_vm_splats(row: StressRow, vm: VmResult, kernel: KernelFacts) -> None:
    """Splats the runner found in the guest's whole dmesg that the row's own
    kernel-log watch did not see (and the era does not explain) fail the row."""
    row.vm = vm_summary(vm)
    seen = {s.line for s in (*row.splats, *row.excused_splats)}
    allowed = era.expected_splats(kernel, [spec_of(row)])
    extra = [s for s in vm.splats if s.line not in seen
             and not any(a.matches(s.line, s.text) for a in allowed)]
    if extra:
        row.splats += extra
        row.reasons += [f"kernel splat in the guest's dmesg ({s.kind}): {s.line.strip()}"
                        for s in extra]
        if row.outcome == PASS:
            # No era predicts a splat: the row the guest judged is not as predicted,
            # and the guest's prediction stands (the host does not predict again).
            row.outcome, row.as_predicted = FAIL, False
