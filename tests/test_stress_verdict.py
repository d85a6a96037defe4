"""A stress row's outcome against its prediction, on made-up rows (no kernel needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pybpfmap.stress import records, verdict
from pybpfmap.stress.records import ProbeStats, StressRow, StressRun
from pybpfmap.vm.qemu import Accel
from pybpfmap.vm.runner import Outcome, VmResult
from pybpfmap.vm.splats import Splat
from pybpfmap.vm.watchdog import Evidence, VcpuEvidence

R61, R510 = "6.1.0-50-amd64", "5.10.0-46-amd64"


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
    row = verdict.judge(_row(), R61, "", False)
    assert (row.outcome, row.as_predicted, row.prediction) == ("PASS", True, "PASS")
    assert row.prediction_commits


def test_probe_that_never_fired_fails():
    row = verdict.judge(_row(events=0), R61, "", False)
    assert row.outcome == "FAIL" and "never ran its map ops" in row.reasons[0]
    assert row.as_predicted is False


def test_late_heartbeat_and_stuck_workload_fail():
    late = _row()
    late.heartbeat_max_delay_s = 9.0
    assert "unresponsive" in verdict.judge(late, R61, "", False).reasons[0]
    stuck = _row()
    stuck.workloads = {"stressed": {"irq": {"ops": 0, "error": "did not finish"}}}
    assert verdict.judge(stuck, R61, "", False).outcome == "FAIL"


def test_unexplained_splat_fails_the_era_warn_does_not():
    log = "[ 1.0] WARNING: CPU: 1 PID: 2 at kernel/bpf/x.c:1 f+0x1/0x2\n"
    assert verdict.judge(_row(), R61, log, False).outcome == "FAIL"
    warn = ("[ 1.0] trace type BPF program uses run-time allocation\n"
            "[ 1.0] WARNING: CPU: 1 PID: 2 at kernel/bpf/verifier.c:10519 bpf_check+0x1\n")
    row = verdict.judge(_row(prealloc=False), R510, warn, False)
    assert row.outcome == "PASS" and len(row.excused_splats) == 1
    assert verdict.judge(_row(prealloc=True), R510, warn, False).outcome == "FAIL"


def test_reentry_ebusy_is_the_prediction_on_6_1_and_wrong_on_7_3():
    row = verdict.judge(_row("reentry", errors={"nested update": {"EBUSY": 5}}), R61, "", False)
    assert (row.outcome, row.as_predicted) == ("PASS", True)
    assert "nested update:EBUSY" in row.explained
    row = verdict.judge(_row("reentry", errors={"nested update": {"EBUSY": 5}}),
                        "7.3.4+deb13-amd64", "", False)
    assert row.outcome == "FAIL" and row.as_predicted is False
    row = verdict.judge(_row("reentry"), R61, "", False)  # fired, but no EBUSY at all
    assert (row.outcome, row.as_predicted) == ("PASS", False)


def _vm(outcome: Outcome, evidence: Evidence | None = None) -> VmResult:
    return VmResult(outcome, f"guest {outcome.label}: CPU#0 stuck", None, Accel.TCG,
                    "bullseye", R510, Path("/tmp/x"), evidence=evidence,
                    last_heartbeat={0: 20.5, 1: 49.0})


def test_hung_boot_is_a_deadlock_with_evidence_and_time_from_attach():
    ev = Evidence(True, "busy", [VcpuEvidence(0, "native_queued_spin_lock_slowpath+0x24",
                                              False, False, True, "pcpu_lock")])
    row = verdict.from_vm(_row(type_="percpu_hash", prealloc=False), _vm(Outcome.HUNG, ev),
                          19.9, R510, False)
    assert (row.outcome, row.as_predicted, row.seconds) == ("DEADLOCK", True, 0.6)
    assert row.evidence.vcpus[0].spin_lock == "pcpu_lock"
    # a preallocated kind that hangs is not what the era predicts
    row = verdict.from_vm(_row(), _vm(Outcome.HUNG, ev), 19.9, R510, False)
    assert (row.outcome, row.as_predicted) == ("DEADLOCK", False)


@pytest.mark.parametrize("outcome", [Outcome.PANIC, Outcome.TIMEOUT, Outcome.LOST])
def test_other_unfinished_boots_fail(outcome):
    row = verdict.from_vm(_row(), _vm(outcome), 1.0, R510, False)
    assert row.outcome == "FAIL" and row.as_predicted is False


def test_vm_splats_merge_minus_era_allowed():
    row = verdict.judge(_row(prealloc=False), R510, "", False)
    vm = _vm(Outcome.SPLAT)
    vm.splats = [Splat("warning", 3, "WARNING: CPU: 0 PID: 9 at kernel/bpf/verifier.c:10519 x",
                       "trace type BPF program uses run-time allocation\nWARNING: ...")]
    verdict.merge_vm_splats(row, vm, R510, False)
    assert row.outcome == "PASS"
    vm.splats.append(Splat("bug", 9, "BUG: unable to handle page fault", "BUG: ..."))
    verdict.merge_vm_splats(row, vm, R510, False)
    assert row.outcome == "FAIL" and row.as_predicted is False


def test_exit_status_and_answer():
    ok = verdict.judge(_row(), R510, "", False)
    dead = verdict.from_vm(_row(type_="percpu_hash", prealloc=False), _vm(Outcome.HUNG),
                           None, R510, False)
    run = StressRun(R510, "vm:bullseye", "5.7-5.10", 5, True, [], [ok, dead])
    assert run.exit_status() == records.EXIT_UNSAFE
    assert run.answer() == [f"allocator on {R510}: safe: hash/prealloc; DEADLOCK: "
                            "percpu_hash/no_prealloc"]
    assert ("the guest hung before its first probe's attach returned (no armed mark)"
            in dead.reasons)
    bad = verdict.judge(_row(events=0), R510, "", False)
    assert StressRun(R510, "host", "", 5, False, [], [ok, bad]).exit_status() == \
        records.EXIT_UNEXPECTED
    assert StressRun(R510, "host", "", 5, False, [], [ok]).exit_status() == 0


def test_rows_round_trip_through_json():
    from pybpfmap.records import to_json

    ev = Evidence(True, "busy", [VcpuEvidence(0, "x+0x1", False, False, True, "pcpu_lock",
                                              ["a+0x1", "b+0x2"], 30.0)])
    row = verdict.from_vm(_row(), _vm(Outcome.HUNG, ev), 19.9, R510, False)
    run = StressRun(R510, "vm:bullseye", "5.7-5.10", 5, True, ["x"], [row])
    (back,) = records.load(to_json(run))
    assert back == run
    assert "pcpu_lock" in records.render_markdown([back])


def test_a_probe_the_kernel_never_called_is_not_exercised_not_failed():
    row = _row()
    row.per_probe.append(ProbeStats("_raw_spin_unlock_bh", "kprobe", 0, kprobe_hits=0))
    judged = verdict.judge(row, R510, "", True)
    assert judged.outcome == "PASS" and "not exercised" in judged.note
    fired_but_skipped = _row()
    fired_but_skipped.per_probe.append(ProbeStats("_raw_spin_unlock_bh", "kprobe", 0,
                                                  kprobe_hits=12))
    assert verdict.judge(fired_but_skipped, R510, "", False).outcome == "FAIL"
    nothing = _row(events=0)
    nothing.per_probe[0].kprobe_hits = 0
    assert "no probe ran its map ops" in verdict.judge(nothing, R510, "", False).reasons
