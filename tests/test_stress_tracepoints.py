"""`pybpfmap stress --tracepoints` on this machine: the weaker variant for kernels
without kprobes (lock:contention_begin/end, kmem:kmalloc/kfree), its negative
controls, and cleanup on normal exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import pytest

from pybpfmap.stress import allocator, kinds, run
from tests import stress_leftovers as leftovers
from tests.helpers import json_out

AVAILABLE, WHY_NOT = allocator.tracepoints_available()
TP_NEEDED = pytest.mark.skipif(not AVAILABLE, reason="none of the lock:/kmem: tracepoints "
                               "exist here: " + "; ".join(WHY_NOT.values()))
STRESS = ("stress", "--tracepoints", "--json")


def one_run(proc) -> dict:
    """The one run of a ``pybpfmap stress --json`` here (its records are a list)."""
    (run,) = json_out(proc)
    return run


@pytest.fixture
def clean():
    """Assert that nothing of ours is left after the test."""
    before = leftovers.snapshot()
    yield
    assert leftovers.settled(before) == {}


@pytest.mark.root
@TP_NEEDED
def test_every_row_fires_and_passes(pybpfmap, clean):
    res = one_run(pybpfmap(*STRESS, "--duration", "1", "--baseline", "0.5"))
    assert "WEAKER TRACEPOINT VARIANT" in res["note"]
    assert [r["kind"] for r in res["rows"]] == [k.name for k in kinds.KINDS]
    for row in res["rows"]:
        assert (row["outcome"], row["as_predicted"], row["variant"]) == (
            "PASS", True, "tracepoint"), row["reasons"]
        assert [p["probe"] for p in row["per_probe"]] == AVAILABLE
        assert all(p["events"] > 0 and p["prog_run_cnt"] > 0 for p in row["per_probe"]), row
        for name, w in row["workloads"]["stressed"].items():
            assert w["ops"] > 0, name


@pytest.mark.root
@TP_NEEDED
def test_negative_control_injected_splat_fails(pybpfmap, clean):
    """A WARN line written to the kernel log during the run must turn the row to FAIL."""
    (row,) = one_run(pybpfmap(*STRESS, "--duration", "1", "--baseline", "0.5", "--types",
                               "hash/prealloc", "--inject", "splat", expect=1))["rows"]
    assert (row["outcome"], row["as_predicted"]) == ("FAIL", False)
    assert [s["kind"] for s in row["splats"]] == ["warning"]
    assert "pybpfmap-negative-control" in row["splats"][0]["line"]


@pytest.mark.root
@TP_NEEDED
def test_negative_control_stalled_heartbeat_fails(pybpfmap, clean):
    """The whole process stopped (SIGSTOP) longer than the limit: reported as unresponsive."""
    (row,) = one_run(pybpfmap(*STRESS, "--duration", "2", "--baseline", "0.5", "--types",
                               "hash/prealloc", "--inject", "stall", "--heartbeat-limit", "0.5",
                               expect=1))["rows"]
    assert row["outcome"] == "FAIL" and row["heartbeat_max_delay_s"] > 0.5
    assert any("unresponsive" in r for r in row["reasons"])


@pytest.mark.root
@TP_NEEDED
def test_cleanup_on_error(kernel, clean, monkeypatch):
    """An exception while the probes are attached still detaches everything."""
    calls = []
    real_go = allocator.workloads.Started.go

    def failing(self):
        calls.append(self)
        if len(calls) == 2:  # the run with the probes attached (1: the baseline)
            assert leftovers.snapshot()["bpftool_progs"], "probes should be attached now"
            raise RuntimeError("boom")
        real_go(self)

    monkeypatch.setattr(allocator.workloads.Started, "go", failing)
    opts = run.Options(duration=1, tracepoints=True, baseline=0.3,
                       kinds=kinds.select(["hash/prealloc"]))
    with pytest.raises(RuntimeError, match="boom"):
        run.run_local(opts, kernel)
    assert len(calls) == 2
    assert all(not p.is_alive() for p, _ in calls[1].jobs.values())


@pytest.mark.root
@TP_NEEDED
def test_cleanup_on_ctrl_c(clean, ctrl_c):
    result = ctrl_c(["stress", "--tracepoints", "--duration", "60", "--baseline", "0.3"])
    assert result.returncode == 130, result.stderr
    assert "interrupted; everything was detached" in result.stderr


@pytest.mark.root  # stress refuses non-root before it looks at the machine
def test_refuses_outside_a_vm_without_force(monkeypatch, capsys):
    from pybpfmap import cli, guest, kernel

    real = kernel.probe

    def not_a_vm():
        k = real()
        k.in_vm = False
        return k

    monkeypatch.setattr(kernel, "probe", not_a_vm)
    monkeypatch.delenv(guest.ENV_KERNEL, raising=False)
    assert cli.main(["stress", "--tracepoints", "--duration", "1"]) == 1
    assert "--force: this machine is not a VM" in capsys.readouterr().err


@pytest.mark.root  # stress refuses non-root before it looks at the kernel
def test_predicted_deadlocks_never_run_outside_the_test_vm(monkeypatch, capsys):
    """--force or not: on a 5.10 kernel the allocator scenario with NO_PREALLOC
    maps is refused outside the test VM."""
    from pybpfmap import cli, guest, kernel
    from pybpfmap.kfacts import KernelFacts

    real = kernel.probe

    def old_kernel():
        k = real()
        k.kernel_release, k.kprobes = "5.10.0-46-amd64", True
        k.facts = KernelFacts.assumed_from(k.kernel_release).records()  # its era, not ours
        return k

    monkeypatch.setattr(kernel, "probe", old_kernel)
    monkeypatch.delenv(guest.ENV_KERNEL, raising=False)
    assert cli.main(["stress", "--force", "--duration", "1", "--types",
                     "percpu_hash/no_prealloc"]) == 1
    assert "predicted to deadlock" in capsys.readouterr().err


@pytest.mark.parametrize("types", [["lru_hash/no_prealloc"], ["hash,nosuch"]])
def test_bad_types_is_a_usage_error(capsys, types):
    from pybpfmap import cli

    assert cli.main(["stress", "--tracepoints", "--types", *types]) == 2
    err = capsys.readouterr().err
    assert "--types" in err and "LRU maps exist preallocated only" in err


def test_types_take_commas_and_spaces_alike():
    assert kinds.select(["hash/prealloc", "percpu_hash"]) == [
        kinds.BY_NAME["hash/prealloc"], kinds.BY_NAME["percpu_hash/prealloc"],
        kinds.BY_NAME["percpu_hash/no_prealloc"]]
    from pybpfmap.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["stress", "--types", "hash,lru_hash"]).types == \
        parse(["stress", "--types", "hash", "lru_hash"]).types == ["hash", "lru_hash"]
