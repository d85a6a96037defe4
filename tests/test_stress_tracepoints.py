"""`pybpfmap stress --tracepoints` on this machine: the weaker variant for kernels
without kprobes (lock:contention_begin/end, kmem:kmalloc/kfree), its negative
controls, and cleanup on normal exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pybpfmap.stress import leftovers, programs, run, verdict

pytestmark = pytest.mark.root

TP_NEEDED = pytest.mark.skipif(
    not programs.tracepoints_available()[0],
    reason="none of the lock:/kmem: tracepoints exist: "
           + "; ".join(programs.tracepoints_available()[1].values()))


def stress(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pybpfmap", "stress", "--tracepoints",
                           "--json", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def clean():
    """Assert that nothing of ours is left after the test."""
    before = leftovers.snapshot()
    yield
    assert leftovers.settled(before) == {}


@TP_NEEDED
def test_every_row_fires_and_passes(clean):
    p = stress("--duration", "2", "--baseline", "1")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["verdict"] == "PASS", res["reasons"]
    assert res["variant"] == "tracepoint" and "WEAKER TRACEPOINT VARIANT" in res["note"]
    available = programs.tracepoints_available()[0]
    assert {r["probe"] for r in res["rows"]} == set(available)
    assert len(res["rows"]) == len(available) * len(programs.MAPS)
    for row in res["rows"]:
        assert {"probe", "type", "prealloc", "events", "errors", "verdict"} <= row.keys()
        assert row["events"] > 0, row
        assert row["prog_run_cnt"] > 0, row
    for name, w in res["workloads"]["stressed"].items():
        assert w["ops"] > 0, name
    assert "verdict: PASS" in p.stderr  # the human table goes to stderr with --json


@TP_NEEDED
def test_negative_control_injected_splat_fails(clean):
    """A WARN line written to the kernel log during the run must turn the verdict to FAIL."""
    p = stress("--duration", "1", "--baseline", "0.5", "--types", "hash/prealloc",
               "--inject", "splat")
    assert p.returncode == 1, p.stderr
    res = json.loads(p.stdout)
    assert res["verdict"] == "FAIL"
    assert [s["kind"] for s in res["splats"]] == ["warning"]
    assert "pybpfmap-negative-control" in res["splats"][0]["line"]
    assert all(r["verdict"] == "FAIL" for r in res["rows"])


@TP_NEEDED
def test_negative_control_stalled_heartbeat_fails(clean):
    """The whole process stopped (SIGSTOP) longer than the limit: reported as unresponsive."""
    p = stress("--duration", "2", "--baseline", "0.5", "--types", "hash/prealloc",
               "--inject", "stall", "--heartbeat-limit", "0.5")
    assert p.returncode == 1, p.stderr
    res = json.loads(p.stdout)
    assert res["verdict"] == "FAIL"
    assert res["heartbeat"]["max_delay_s"] > 0.5
    assert any("unresponsive" in r for r in res["reasons"])


@TP_NEEDED
def test_cleanup_on_error(clean, monkeypatch):
    """An exception while the probes are attached still detaches everything."""
    from pybpfmap import kernel

    calls = []
    real_go = run.workloads.Started.go

    def failing(self):
        calls.append(self)
        if len(calls) == 2:  # the run with the probes attached (1: the baseline)
            assert leftovers.snapshot()["bpftool_progs"], "probes should be attached now"
            raise RuntimeError("boom")
        real_go(self)

    monkeypatch.setattr(run.workloads.Started, "go", failing)
    opts = run.Options(duration=1, tracepoints=True, baseline=0.3, types=["hash"])
    with pytest.raises(RuntimeError, match="boom"):
        run.run_local(opts, kernel.probe())
    assert len(calls) == 2
    assert all(not p.is_alive() for p, _ in calls[1].jobs.values())


@TP_NEEDED
def test_cleanup_on_ctrl_c(clean, ctrl_c):
    result = ctrl_c(["stress", "--tracepoints", "--duration", "60", "--baseline", "0.3"],
                    lambda: bool(leftovers.snapshot()["bpftool_progs"]))
    assert result.returncode == 130, result.stderr
    assert "interrupted; everything was detached" in result.stderr


def test_refuses_outside_a_vm_without_force(monkeypatch, capsys):
    from pybpfmap import cli, kernel

    real = kernel.probe

    def not_a_vm():
        k = real()
        k.in_vm = False
        return k

    monkeypatch.setattr(kernel, "probe", not_a_vm)
    monkeypatch.delenv("PYBPFMAP_IN_TEST_VM", raising=False)
    assert cli.main(["stress", "--tracepoints", "--duration", "1"]) == 1
    assert "not a VM" in capsys.readouterr().err


def test_bad_types_is_a_usage_error(capsys):
    from pybpfmap import cli

    assert cli.main(["stress", "--tracepoints", "--types", "lru_hash/no_prealloc"]) == 2
    assert "LRU maps exist preallocated only" in capsys.readouterr().err


def test_verdict_constants():
    assert verdict.PASS == "PASS" and verdict.FAIL == "FAIL"
    assert os.path.basename(programs.KPROBE_EVENTS) == "kprobe_events"
