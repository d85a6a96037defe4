"""pybpfmap bench: the harness ranks, repeats and records as it should.

No speed thresholds: only relations a correct harness must show on any
machine (two triples cost more than one; the same program measured twice
gives close figures; every record has its fields; both modes run).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pybpfmap import stats
from pybpfmap.bench import table
from pybpfmap.maps import MapSpec

REPO = Path(__file__).resolve().parent.parent
FIELDS = {"type", "prealloc", "mode", "cpus", "max_entries", "runs", "cv", "kernel", "where",
          "trigger", "memlock", "samples"}


@pytest.fixture
def real_cpu(kernel) -> None:
    """Skip timing relations where the CPU is emulated (QEMU TCG, e.g. the test
    VM without KVM): there a figure says how fast QEMU translates, not the kernel."""
    if kernel.in_vm and kernel.virt == "qemu":
        pytest.skip("CPU emulated by QEMU TCG: timing relations are not meaningful here")


def bench(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pybpfmap", "bench", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=check)


def test_stats_cv() -> None:
    s = stats.summarise([10.0, 10.0, 10.0])
    assert (s.median, s.cv, s.noisy) == (10.0, 0.0, False)
    noisy = stats.summarise([10.0, 12.0, 8.0])
    assert noisy.cv == pytest.approx(0.2) and noisy.noisy


def test_table_shape_and_seed_ratio() -> None:
    env = {"kernel": "6.x", "where": "host", "trigger": "test_run", "max_entries": 1000,
           "type": "hash", "mode": "inkernel", "memlock": 4096, "cv_warning": False}
    recs = [{**env, "prealloc": True, "cpus": 1, "ns_per_op": 50.0,
             "ops_per_sec_per_cpu": 20_000_000},
            {**env, "prealloc": False, "cpus": 1, "ns_per_op": 100.0,
             "ops_per_sec_per_cpu": 10_000_000},
            {**env, "type": "lru_hash", "prealloc": False, "cpus": None,
             "refused": {"errno": 524, "reason": "ENOTSUPP"}}]
    text = table.render(recs)
    assert "2.00x" in text  # prealloc twice as fast
    assert f"{table.SEED_RATIOS[1]:.2f}x" in text
    assert "refused: ENOTSUPP" in text


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from pybpfmap.bench.plot import plot

    base = {"kernel": "6.x", "where": "host", "type": "hash", "prealloc": True,
            "mode": "inkernel", "memlock": 1}
    recs = [{**base, "cpus": c, "max_entries": n, "ns_per_op": 50.0 + n / 1e4,
             "ops_per_sec_total": c * 1e7, "memlock": n * 80}
            for c in (1, 2) for n in (1000, 100000)]
    plot(recs, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_cpus_is_a_usage_error() -> None:
    got = bench("--mode", "inkernel", "--cpus", "4096", check=False)
    assert got.returncode == 2 and "--cpus" in got.stderr and "Traceback" not in got.stderr


@pytest.mark.root
def test_two_triples_cost_more_than_one(real_cpu) -> None:
    from pybpfmap.bench import inkernel

    spec = MapSpec("hash", True, 4, 8, 1000)
    cost = {}
    for n in (1, 2):
        with inkernel.load(spec, triples=n) as progs:
            repeat = inkernel.calibrate(progs.triple_fd, 0.005)
            s = inkernel.measure(progs, [0], 0.1, repeat, repeat)
            cost[n] = statistics.fmean(s.triple_ns) - statistics.fmean(s.empty_ns)
    assert cost[2] > 1.3 * cost[1], cost


@pytest.mark.root
def test_inkernel_figures_repeat(real_cpu) -> None:
    from pybpfmap.bench import inkernel

    with inkernel.load(MapSpec("hash", True, 4, 8, 1000)) as progs:
        repeat = inkernel.calibrate(progs.triple_fd, 0.005)
        runs = [inkernel.measure(progs, [0], 0.1, repeat, repeat).ns_per_op()
                for _ in range(3)]
    # same program, same CPU: runs agree (a loose bound: shared CI machines are noisy)
    assert stats.summarise(runs).cv < 0.15, runs


@pytest.mark.root
def test_both_modes_json_complete() -> None:
    got = bench("--mode", "both", "--types", "hash", "lru_hash", "--cpus", "1",
                "--max-entries", "1000", "--runs", "2", "--seconds", "0.05", "--json", "-")
    recs = json.loads(got.stdout)
    measured = [r for r in recs if "refused" not in r]
    assert {(r["type"], r["prealloc"], r["mode"]) for r in measured} == {
        (t, p, m) for t, p in (("hash", True), ("hash", False), ("lru_hash", True))
        for m in ("inkernel", "syscall")}
    for r in measured:
        assert not FIELDS - r.keys(), FIELDS - r.keys()
        assert r["runs"] == 2 and len(r["samples"]) == 2
        assert r["max_entries"] == 1000 and r["cpus"] == 1
        if r["mode"] == "inkernel":
            assert r["ns_per_op"] > 0 and r["trigger"] == "test_run"
        else:
            assert r["events_per_sec"] > 0 and r["trigger"] in ("kprobe", "tracepoint",
                                                                  "raw_tp")
            assert "trigger_ratio" in r
    refused = [r for r in recs if "refused" in r]
    assert {(r["type"], r["prealloc"]) for r in refused} == {("lru_hash", False)}
    assert all(r["refused"]["errno"] == 524 for r in refused)


@pytest.mark.root
@pytest.mark.kprobes
def test_syscall_mode_on_a_kprobe() -> None:
    got = bench("--mode", "syscall", "--trigger", "kprobe", "--types", "hash", "--prealloc",
                "--cpus", "1", "--max-entries", "1000", "--runs", "1", "--seconds", "0.05",
                "--json", "-")
    (rec,) = json.loads(got.stdout)
    assert rec["trigger"] == "kprobe" and rec["events_per_sec"] > 0


def test_progress_bar_goes_to_its_stream() -> None:
    import io

    from pybpfmap.output import Progress

    out = io.StringIO()
    p = Progress(4, stream=out, enabled=True)
    for i in range(4):
        p.step(f"step {i}")
    p.done()
    assert "4/4" in out.getvalue() and "#" * 30 in out.getvalue()
    quiet = io.StringIO()
    Progress(4, stream=quiet).step("x")  # not a terminal: silent
    assert quiet.getvalue() == ""


@pytest.mark.root
@pytest.mark.vm
@pytest.mark.slow
def test_bench_in_the_vm_uses_a_kprobe(tmp_path: Path) -> None:
    got = bench("--kernel", "bookworm", "--mode", "syscall", "--types", "hash", "--prealloc",
                "--cpus", "1", "--max-entries", "1000", "--runs", "1", "--seconds", "0.05",
                "--results-dir", str(tmp_path / "vm"), "--json", "-")
    (rec,) = json.loads(got.stdout)
    assert (rec["where"], rec["trigger"]) == ("vm", "kprobe")
    assert rec["accel"] in ("kvm", "tcg", "tcg-mttcg") and rec["events_per_sec"] > 0


def test_no_compiler_means_ratio_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from pybpfmap.bench import syscall

    monkeypatch.setattr(syscall.shutil, "which", lambda name: None)
    exe, why = syscall.compiled_loop()
    assert exe is None and "gcc" in why


@pytest.mark.root
def test_raw_tracepoint_trigger() -> None:
    got = bench("--mode", "syscall", "--trigger", "raw_tp", "--types", "percpu_hash",
                "--cpus", "1", "--max-entries", "1000", "--runs", "1", "--seconds", "0.05",
                "--json", "-")
    recs = json.loads(got.stdout)
    assert {r["prealloc"] for r in recs} == {True, False}
    assert all(r["trigger"] == "raw_tp" and r["events_per_sec"] > 0 for r in recs)
