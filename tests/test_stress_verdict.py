"""A stress row's outcome against its prediction, on made-up rows, and the scenario,
probe-kind and injection objects that decide them (no kernel needed)."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest

from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.guest import Accel
from pybpfmap.kfacts import KernelFacts
from pybpfmap.maps import MapSpec
from pybpfmap.splats import Splat
from pybpfmap.stress import inject, kinds, probes, records, run, scenarios, verdict
from pybpfmap.stress.records import ProbeStats, StressRow, StressRun
from pybpfmap.vm.outcome import Outcome, VmResult
from pybpfmap.vm.watchdog import Evidence, VcpuEvidence

R61, R510 = "6.1.0-50-amd64", "5.10.0-46-amd64"


def K(release: str, preempt_rt: bool = False) -> KernelFacts:  # noqa: N802 - reads as a kernel
    """A kernel not probed: every era fact from the version."""
    return KernelFacts.assumed_from(release, preempt_rt)


def _row(scenario="allocator", type_="hash", prealloc=True, errors=None, events=100,
         **kw) -> StressRow:
    row = StressRow(scenario, f"{type_}/{'prealloc' if prealloc else 'no_prealloc'}", type_,
                    prealloc, 8, "kprobe", "_raw_spin_unlock", **kw)
    row.per_probe = [ProbeStats("_raw_spin_unlock", "kprobe", events)]
    row.events = events
    row.errors = errors or {}
    row.heartbeat_max_delay_s = 0.01
    row.workloads = {"stressed": {"process": {"ops": 10}}}
    return row


def test_clean_row_passes_as_predicted():
    row = verdict.judge(_row(), K(R61), "")
    assert (row.outcome, row.as_predicted, row.prediction) == ("PASS", True, "PASS")
    assert row.prediction_commits


def test_probe_that_never_fired_fails():
    row = verdict.judge(_row(events=0), K(R61), "")
    assert row.outcome == "FAIL" and "never ran its map ops" in row.reasons[0]
    assert row.as_predicted is False


def test_late_heartbeat_and_stuck_workload_fail():
    late = _row()
    late.heartbeat_max_delay_s = 9.0
    assert "unresponsive" in verdict.judge(late, K(R61), "").reasons[0]
    stuck = _row()
    stuck.workloads = {"stressed": {"irq": {"ops": 0, "error": "did not finish"}}}
    assert verdict.judge(stuck, K(R61), "").outcome == "FAIL"


def test_unexplained_splat_fails_the_era_warn_does_not():
    log = "[ 1.0] WARNING: CPU: 1 PID: 2 at kernel/bpf/x.c:1 f+0x1/0x2\n"
    assert verdict.judge(_row(), K(R61), log).outcome == "FAIL"
    warn = ("[ 1.0] trace type BPF program uses run-time allocation\n"
            "[ 1.0] WARNING: CPU: 1 PID: 2 at kernel/bpf/verifier.c:10519 bpf_check+0x1\n")
    row = verdict.judge(_row(prealloc=False), K(R510), warn)
    assert row.outcome == "PASS" and len(row.excused_splats) == 1
    assert verdict.judge(_row(prealloc=True), K(R510), warn).outcome == "FAIL"


def test_reentry_ebusy_is_the_prediction_on_6_1_and_wrong_on_7_3():
    row = verdict.judge(_row("reentry", errors={"nested update": {"EBUSY": 5}}), K(R61), "")
    assert (row.outcome, row.as_predicted) == ("PASS", True)
    assert "nested update:EBUSY" in row.explained
    row = verdict.judge(_row("reentry", errors={"nested update": {"EBUSY": 5}}),
                        K("7.3.4+deb13-amd64"), "")
    assert row.outcome == "FAIL" and row.as_predicted is False
    row = verdict.judge(_row("reentry"), K(R61), "")  # fired, but no EBUSY at all
    assert (row.outcome, row.as_predicted) == ("PASS", False)


def _vm(outcome: Outcome, evidence: Evidence | None = None) -> VmResult:
    return VmResult(outcome, f"guest {outcome.label}: CPU#0 stuck", None, Accel.TCG,
                    "bullseye", R510, Path("/tmp/x"), evidence=evidence,
                    last_heartbeat={0: 20.5, 1: 49.0})


def test_hung_boot_is_a_deadlock_with_evidence_and_time_from_attach():
    ev = Evidence(True, "busy", [VcpuEvidence(0, "native_queued_spin_lock_slowpath+0x24",
                                              False, False, True, "pcpu_lock")])
    row = verdict.from_vm(_row(type_="percpu_hash", prealloc=False), _vm(Outcome.HUNG, ev),
                          19.9, K(R510))
    assert (row.outcome, row.as_predicted, row.seconds) == ("DEADLOCK", True, 0.6)
    assert row.evidence.vcpus[0].spin_lock == "pcpu_lock"
    # a preallocated kind that hangs is not what the era predicts
    row = verdict.from_vm(_row(), _vm(Outcome.HUNG, ev), 19.9, K(R510))
    assert (row.outcome, row.as_predicted) == ("DEADLOCK", False)


@pytest.mark.parametrize("outcome", [Outcome.PANIC, Outcome.TIMEOUT, Outcome.LOST])
def test_other_unfinished_boots_fail(outcome):
    row = verdict.from_vm(_row(), _vm(outcome), 1.0, K(R510))
    assert row.outcome == "FAIL" and row.as_predicted is False


def test_vm_splats_merge_minus_era_allowed():
    row = verdict.judge(_row(prealloc=False), K(R510), "")
    vm = _vm(Outcome.SPLAT)
    vm.splats = [Splat("warning", 3, "WARNING: CPU: 0 PID: 9 at kernel/bpf/verifier.c:10519 x",
                       "trace type BPF program uses run-time allocation\nWARNING: ...")]
    verdict.merge_vm_splats(row, vm, K(R510))
    assert row.outcome == "PASS"
    vm.splats.append(Splat("bug", 9, "BUG: unable to handle page fault", "BUG: ..."))
    verdict.merge_vm_splats(row, vm, K(R510))
    assert row.outcome == "FAIL" and row.as_predicted is False


def test_exit_status_and_answer():
    ok = verdict.judge(_row(), K(R510), "")
    dead = verdict.from_vm(_row(type_="percpu_hash", prealloc=False), _vm(Outcome.HUNG),
                           None, K(R510))
    run = StressRun(R510, "vm:bullseye", "5.7-5.10", 5, True, [], [ok, dead])
    assert run.exit_status() == records.EXIT_UNSAFE
    assert run.answer() == [f"allocator on {R510}: safe: hash/prealloc; DEADLOCK: "
                            "percpu_hash/no_prealloc"]
    assert ("the guest hung before its first probe's attach returned (no armed mark)"
            in dead.reasons)
    bad = verdict.judge(_row(events=0), K(R510), "")
    assert StressRun(R510, "host", "", 5, False, [], [ok, bad]).exit_status() == \
        records.EXIT_UNEXPECTED
    assert StressRun(R510, "host", "", 5, False, [], [ok]).exit_status() == 0


def test_rows_round_trip_through_json():
    from pybpfmap.records import to_json

    ev = Evidence(True, "busy", [VcpuEvidence(0, "x+0x1", False, False, True, "pcpu_lock",
                                              ["a+0x1", "b+0x2"], 30.0)])
    row = verdict.from_vm(_row(), _vm(Outcome.HUNG, ev), 19.9, K(R510))
    run = StressRun(R510, "vm:bullseye", "5.7-5.10", 5, True, ["x"], [row])
    (back,) = records.load([to_json(run)])
    assert back == run
    assert "pcpu_lock" in records.render_markdown([back])


def test_a_probe_the_kernel_never_called_is_not_exercised_not_failed():
    row = _row()
    row.per_probe.append(ProbeStats("_raw_spin_unlock_bh", "kprobe", 0, kprobe_hits=0))
    judged = verdict.judge(row, K(R510, True), "")
    assert judged.outcome == "PASS" and "not exercised" in judged.note
    fired_but_skipped = _row()
    fired_but_skipped.per_probe.append(ProbeStats("_raw_spin_unlock_bh", "kprobe", 0,
                                                  kprobe_hits=12))
    assert verdict.judge(fired_but_skipped, K(R510), "").outcome == "FAIL"
    nothing = _row(events=0)
    nothing.per_probe[0].kprobe_hits = 0
    assert "no probe ran its map ops" in verdict.judge(nothing, K(R510), "").reasons


@pytest.mark.parametrize("err,name", [(0, "ok"), (errno.EBUSY, "EBUSY"),
                                      (errno.EDEADLK, "EDEADLK"), (524, "ENOTSUPP"),
                                      (600, "errno 600"), (None, "other")])
def test_results_are_named_at_the_record_boundary_and_read_back_as_errnos(err, name):
    assert records.result_name(err) == name
    assert records.result_errno(name) == err


def test_an_errno_the_counters_did_not_keep_is_never_explained():
    row = verdict.judge(_row("reentry", errors={"nested update": {"other": 3}}), K(R61), "")
    assert row.outcome == "FAIL" and "nested update returned other 3x" in row.reasons[0]
    assert row.counted_errnos() == set()


def test_scenarios_are_the_records_names_and_say_where_they_may_deadlock():
    assert list(scenarios.SCENARIOS) == ["allocator", "reentry", "nmi", "nmi-slot", "writers"]
    assert scenarios.SCENARIOS.named("allocator") is scenarios.ALLOCATOR
    with pytest.raises(UsageError, match="--scenario"):
        scenarios.SCENARIOS.named("nosuch")
    percpu_no = MapSpec("percpu_hash", False)
    assert scenarios.ALLOCATOR.may_deadlock(R510, [MapSpec("hash", True), percpu_no])
    assert not scenarios.ALLOCATOR.may_deadlock(R510, [MapSpec("hash", True)])
    assert not scenarios.ALLOCATOR.may_deadlock(R61, [percpu_no])
    assert scenarios.REENTRY.may_deadlock(R510, [MapSpec("hash", True)])
    assert not scenarios.REENTRY.may_deadlock(R61, [MapSpec("hash", True)])
    assert scenarios.ALLOCATOR.baseline_seconds(20) == 3.0
    assert scenarios.REENTRY.baseline_seconds(20) == 0.0
    assert scenarios.NMI.may_deadlock(R510, [MapSpec("hash", True)])
    assert not scenarios.NMI.may_deadlock(R61, [MapSpec("hash", True)])
    assert scenarios.NMI.may_deadlock(R61, [MapSpec("lru_hash", True)])   # the LRU lock


def _kernel(release=R61, kprobes=True, in_vm=True) -> SimpleNamespace:
    return SimpleNamespace(kernel_release=release, kprobes=kprobes, kprobes_reason="none here",
                           in_vm=in_vm, kernel_facts=lambda: KernelFacts.assumed_from(release))


def test_reentry_refuses_the_tracepoint_variant_and_a_kernel_without_kprobes():
    with pytest.raises(UsageError, match="--tracepoints"):
        scenarios.REENTRY.check(_kernel(), probes.TRACEPOINT)
    with pytest.raises(EnvironmentProblem, match="needs kprobes: none here"):
        scenarios.REENTRY.check(_kernel(kprobes=False), probes.KPROBE)
    scenarios.ALLOCATOR.check(_kernel(kprobes=False), probes.TRACEPOINT)


def test_probe_kinds_know_their_recursion_misses_and_attachment():
    assert probes.PROBE_KINDS.named("raw_tp") is probes.RAW_TP
    assert not probes.KPROBE.misses_counted("6.1.0-50-amd64")
    assert probes.KPROBE.misses_counted("6.12.117+deb13-amd64")
    # trace_call_bpf() runs kprobe and tracepoint programs alike: counted since MISSED_STATS
    assert not probes.TRACEPOINT.misses_counted("5.10.0") and probes.RAW_TP.misses_counted("5.10.0")
    assert probes.TRACEPOINT_NMI.misses_counted("6.12.117+deb13-amd64")
    assert probes.PROBE_KINDS.named("nmi_tracepoint") is probes.TRACEPOINT_NMI
    assert probes.TRACEPOINT.weaker and not probes.KPROBE.weaker
    assert _row().variant_kind is probes.KPROBE
    with pytest.raises(TypeError, match="attached by BCC"):
        probes.RAW_TP.attach(3, "sys_enter", group="g", tag="t", events=None, links=None)


def test_panic_is_injected_only_inside_the_test_vm(monkeypatch):
    from pybpfmap import guest

    monkeypatch.delenv(guest.ENV_KERNEL, raising=False)
    assert [i.name for i in inject.INJECTIONS.values() if i.test_vm_only] == ["panic"]
    opts = run.Options(kinds=kinds.select(["hash/prealloc"]), inject=inject.INJECTIONS["panic"])
    with pytest.raises(UsageError, match="--inject: panic only inside the test VM"):
        run.check_safe_here(opts, _kernel(), force=True)
    run.check_safe_here(run.Options(kinds=opts.kinds, inject=inject.INJECTIONS["splat"]),
                        _kernel(), force=True)
    with pytest.raises(UsageError, match="--inject: 'nosuch' is not one of splat, stall, panic"):
        inject.INJECTIONS.named("nosuch")
