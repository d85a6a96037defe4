"""The stress verdict rules and the era table, on made-up results (no kernel needed)."""

from __future__ import annotations

import copy

import pytest

from pybpfmap.stress import era, verdict
from pybpfmap.stress.run import Options
from pybpfmap.stress.via_vm import guest_command, merge


def _row(**kw) -> dict:
    row = {"probe": "_raw_spin_unlock", "kind": "kprobe", "type": "hash", "prealloc": True,
           "events": 100, "errors": {}}
    row.update(kw)
    return row


def _result(release: str = "6.1.0-56-amd64", **kw) -> dict:
    res = {"kernel_release": release, "heartbeat": {"beats": 10, "max_delay_s": 0.01},
           "workloads": {"stressed": {"process": {"ops": 10}}}, "splats": [],
           "rows": [_row()]}
    res.update(kw)
    return res


def test_clean_run_passes():
    res = verdict.judge(_result())
    assert res["verdict"] == "PASS"
    assert res["rows"][0]["verdict"] == "PASS"


def test_probe_that_never_fired_fails_its_row():
    res = verdict.judge(_result(rows=[_row(), _row(type="percpu_hash", events=0)]))
    assert res["verdict"] == "FAIL"
    assert [r["verdict"] for r in res["rows"]] == ["PASS", "FAIL"]


def test_late_heartbeat_fails_every_row():
    res = verdict.judge(_result(heartbeat={"beats": 3, "max_delay_s": 9.0}))
    assert res["verdict"] == "FAIL"
    assert all(r["verdict"] == "FAIL" for r in res["rows"])
    assert "unresponsive" in res["reasons"][0]


def test_splat_fails():
    splat = {"kind": "warning", "line": "WARNING: CPU: 1 PID: 2 at kernel/bpf/x.c:1"}
    assert verdict.judge(_result(splats=[splat]))["verdict"] == "FAIL"


def test_stuck_workload_fails():
    res = _result(workloads={"stressed": {"irq": {"ops": 0, "error": "did not finish"}}})
    assert verdict.judge(res)["verdict"] == "FAIL"


@pytest.mark.parametrize("release,err,ok", [
    ("5.10.0", "EBUSY", True),
    ("6.1.0-56-amd64", "EBUSY", True),
    ("6.14.2", "EBUSY", True),
    ("6.15.0", "EBUSY", False),
    ("6.15.0", "EDEADLK", True),
    ("6.12.57", "EDEADLK", False),
    ("5.4.0", "EBUSY", False),
    ("6.12.57", "EINVAL", False),
])
def test_reentry_errno_is_explained_only_in_its_era(release, err, ok):
    res = verdict.judge(_result(release, rows=[_row(errors={"update": {err: 3}})]))
    assert (res["verdict"] == "PASS") is ok
    if ok:
        assert "Linux kernel commit" in res["rows"][0]["explained"][f"update:{err}"]


def test_enoent_after_failed_update_is_explained_but_not_more():
    row = _row(errors={"update": {"EBUSY": 2}, "lookup": {"ENOENT": 2}})
    assert verdict.judge(_result(rows=[row]))["verdict"] == "PASS"
    row = _row(errors={"update": {"EBUSY": 2}, "lookup": {"ENOENT": 5}})
    assert verdict.judge(_result(rows=[row]))["verdict"] == "FAIL"


def test_enomem_explained_only_without_prealloc():
    row = _row(prealloc=False, errors={"update": {"ENOMEM": 1}})
    assert verdict.judge(_result(rows=[row]))["verdict"] == "PASS"
    row = _row(prealloc=True, errors={"update": {"ENOMEM": 1}})
    assert verdict.judge(_result(rows=[row]))["verdict"] == "FAIL"


def test_runtime_alloc_warn_allowed_only_on_5_7_to_6_0():
    from pybpfmap.maps import MapSpec

    no_prealloc = [MapSpec("hash", False)]
    assert era.allowed_splats("5.10.0", no_prealloc) == [era.RUNTIME_ALLOC_WARN]
    assert era.allowed_splats("5.10.0", [MapSpec("hash", True)]) == []
    assert era.allowed_splats("6.1.0", no_prealloc) == []
    assert era.allowed_splats("5.6.0", no_prealloc) == []


def test_citations_are_drgn_style():
    assert era.MAP_LOCKED.cite() == ('Linux kernel commit 20b6cc34ea74 ("bpf: Avoid hashtab '
                                     'deadlock with map_locked") (in v5.10)')


GUEST = _result("6.12.57+deb13-amd64")


@pytest.mark.parametrize("outcome", ["hung", "panic", "timeout", "lost"])
def test_vm_outcome_fails_even_with_a_clean_guest_result(outcome):
    vm = {"outcome": outcome, "message": "x", "kernel_release": "6.12.57", "splats": []}
    res = verdict.judge(merge(vm, copy.deepcopy(GUEST), Options(), [True]))
    assert res["verdict"] == "FAIL"
    assert any(outcome in r for r in res["reasons"])


def test_vm_without_guest_result_fails():
    vm = {"outcome": "panic", "message": "Kernel panic", "kernel_release": "6.1.0",
          "splats": []}
    res = verdict.judge(merge(vm, None, Options(), [True]))
    assert res["verdict"] == "FAIL"
    assert "the guest wrote no stress result" in res["reasons"]


def test_vm_splats_merge_minus_era_allowed():
    warn = {"kind": "warning", "lineno": 1, "text": "",
            "line": "WARNING: CPU: 0 PID: 1 at kernel/bpf/verifier.c:1 trace type BPF "
                    "program uses run-time allocation"}
    vm = {"outcome": "splat", "kernel_release": "5.10.0", "splats": [warn]}
    guest = _result("5.10.0")
    assert verdict.judge(merge(vm, copy.deepcopy(guest), Options(), [False]))["verdict"] \
        == "PASS"
    assert verdict.judge(merge(vm, copy.deepcopy(guest), Options(), [True]))["verdict"] \
        == "FAIL"


def test_guest_command_passes_options_through():
    cmd = guest_command(Options(duration=3, types=["hash"], tracepoints=True,
                                inject="panic"))
    assert cmd[:5] == ["python3", "-m", "pybpfmap", "stress", "--in-guest"]
    assert "--tracepoints" in cmd and cmd[cmd.index("--inject") + 1] == "panic"
    assert cmd[cmd.index("--types") + 1] == "hash"
