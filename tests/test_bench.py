"""pybpfmap bench on this kernel: the harness proves what it measures.

No speed thresholds (nor rate or CV bounds): only what a correct harness
must show on any machine — the program's own count of its runs equals the
trigger count, a failing map call is reported and flags the record, a full
map still takes the triple's keys, the memory cgroup charges a preallocated
map at least its element area, every record has its fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pybpfmap.bench import record
from pybpfmap.bench.options import Options
from pybpfmap.bench.record import Mode
from pybpfmap.guest import Accel
from tests.helpers import image


@pytest.fixture
def records(pybpfmap) -> Callable[..., list[record.BenchRecord]]:
    """``records(*args)``: the records of ``pybpfmap bench ARGS --json``."""

    def run(*args: str) -> list[record.BenchRecord]:
        return record.load(json.loads(pybpfmap("bench", *args, "--json", timeout=900).stdout))

    return run


@pytest.fixture
def hash_bench():
    """bench_triple.c loaded on a 1000-entry preallocated hash (syscall
    programs on the syscall tracepoint or raw tracepoint, whichever exists)."""
    from pybpfmap.bench import program, triggers
    from pybpfmap.maps import MapSpec

    trigger, _ = triggers.choose()
    spec = MapSpec("hash", True, 4, 8, 1000)
    with spec.create() as m, program.load(spec, m.fd, program.Workload(
            inkernel_triples=10, syscall_triples=2, trigger=trigger)) as b:
        yield b


@pytest.mark.root
def test_inkernel_event_counter_is_exactly_the_runs_asked_for(hash_bench) -> None:
    from pybpfmap.bench import inkernel

    phase = inkernel.window(hash_bench, "triple", [0], 1000, 0.02)
    assert phase.calls[0] >= inkernel.MIN_CALLS + 1
    assert phase.counts.events[0] == phase.calls[0] * 1000 == phase.triggers()
    assert phase.elsewhere() == 0 and phase.counts.failed == 0
    assert phase.stats.run_cnt == phase.triggers()  # bpf_stats saw every run


@pytest.mark.root
def test_syscall_event_counter_matches_the_trigger_calls(hash_bench) -> None:
    from pybpfmap.bench import syscall

    loop = syscall.compiled_loop()
    phase = syscall.window(hash_bench, "triple", loop, [0], 0.02, 0.05)
    triggers, events = phase.triggers(), phase.events()
    assert triggers > 0
    # Other processes' getuid() on CPU 0 may add a few runs; none may be missing.
    assert 0 <= events - triggers <= max(100, triggers // 100), (events, triggers)
    assert phase.counts.failed == 0


@pytest.mark.root
@pytest.mark.parametrize("prealloc", [True, False])
def test_a_failing_helper_is_reported_and_flags_the_record(prealloc: bool) -> None:
    """A map filled to max_entries without room for the triple's keys: every
    update fails (E2BIG), so lookups and deletes find nothing (ENOENT)."""
    from pybpfmap.bench.run import run

    (rec,) = run(Options(modes=(Mode.INKERNEL,), types=("hash",), prealloc=(prealloc,),
                         max_entries=(64,), fills=(100,), headroom=False, runs=1,
                         seconds=0.02, inkernel_triples=10))
    assert rec.flagged and rec.verification is not None
    fails = rec.verification.failures
    assert fails["update"]["E2BIG"] > 0, fails
    assert fails["lookup"]["ENOENT"] == fails["update"]["E2BIG"]
    assert fails["delete"]["ENOENT"] == fails["update"]["E2BIG"]
    assert any("map calls failed" in p for p in rec.verification.problems)
    assert record.pre_no_ratio([rec], mode=Mode.INKERNEL, type="hash", cpus=1,
                               max_entries=64, fill_percent=100) is None


@pytest.mark.root
@pytest.mark.parametrize("prealloc", [True, False])
def test_a_full_map_still_takes_the_triples_keys(prealloc: bool) -> None:
    from pybpfmap.bench.run import run

    (rec,) = run(Options(modes=(Mode.INKERNEL,), types=("hash",), prealloc=(prealloc,),
                         max_entries=(200,), fills=(100,), runs=1, seconds=0.02,
                         inkernel_triples=10))
    assert rec.verification.ok, rec.verification.problems
    assert rec.resident_keys == 200 and rec.resident_after == 200
    assert rec.map_max_entries == 201 and rec.fill_percent == 100


@pytest.mark.root
def test_kernel_memory_of_a_preallocated_map_is_at_least_its_elements() -> None:
    from pybpfmap import mapmemory
    from pybpfmap.bench.run import run

    chosen, why = mapmemory.choose("auto")
    if not chosen:
        pytest.skip(f"no way to read a map's kernel memory here: {why}")
    n = 65536
    (rec,) = run(Options(modes=(Mode.INKERNEL,), types=("hash",), prealloc=(True,),
                         max_entries=(n,), runs=1, seconds=0.02, inkernel_triples=10))
    mem = rec.memory
    assert not mem.method.startswith("unavailable"), mem.method
    elements = n * (((rec.key_size + 7) & ~7) + ((rec.value_size + 7) & ~7))
    assert mem.kernel_empty >= elements, (mem.kernel_empty, elements)
    assert mem.kernel_after >= elements
    assert mem.peak is None or mem.peak >= mem.kernel_after


@pytest.mark.root
def test_both_modes_json_complete(records) -> None:
    recs = records("--mode", "both", "--types", "hash,lru_hash", "--cpus", "1",
                   "--max-entries", "1000", "--runs", "2", "--seconds", "0.05",
                   "--warmup", "0.02")
    measured = [r for r in recs if r.refused is None]
    assert {(r.type, r.prealloc, r.mode) for r in measured} == {
        (t, p, m) for t, p in (("hash", True), ("hash", False), ("lru_hash", True))
        for m in Mode}
    for r in measured:
        assert r.runs == 2 and len(r.ns_per_triple.values) == 2 and r.cpus == 1
        assert r.verification.ok, r.verification.problems
        assert r.machine.where == "host" and r.machine.possible_cpus >= 1
        assert r.element_counter and r.memory is not None and r.cpu_list == [0]
        if r.mode is Mode.INKERNEL:
            assert r.trigger == "test_run" and r.triples_per_event == 100
            assert r.ns_per_triple_bpf_stats is not None and r.ns_per_triple_wall is not None
            assert r.resolution_ns == 0.01
        else:
            assert r.trigger in ("tracepoint", "raw_tp", "kprobe")
            assert r.trigger_loop and r.events_per_sec.median > 0
            assert r.triples_per_event == 1
    refused = [r for r in recs if r.refused is not None]
    assert {(r.type, r.prealloc) for r in refused} == {("lru_hash", False)}
    assert all(r.refused.errno == 524 for r in refused)


@pytest.mark.root
def test_raw_tracepoint_trigger(records) -> None:
    recs = records("--mode", "syscall", "--trigger", "raw_tp", "--types", "percpu_hash",
                   "--cpus", "1", "--max-entries", "1000", "--runs", "1", "--seconds", "0.05",
                   "--warmup", "0.02", "--triples", "3")
    assert {r.prealloc for r in recs} == {True, False}
    for r in recs:
        assert r.trigger == "raw_tp" and r.triples_per_event == 3
        assert r.verification.ok, r.verification.problems


@pytest.mark.root
@pytest.mark.kprobes
def test_syscall_mode_on_a_kprobe(records) -> None:
    (rec,) = records("--mode", "syscall", "--trigger", "kprobe", "--types", "hash",
                     "--prealloc", "--cpus", "1", "--max-entries", "1000", "--runs", "1",
                     "--seconds", "0.05")
    assert rec.trigger == "kprobe" and rec.verification.ok, rec.verification.problems


@pytest.mark.vm
@pytest.mark.slow
def test_peer_runs_beside_the_syscall_mode_in_the_vm(records, tmp_path: Path) -> None:
    """`bench --kernel` through the relay: the syscall mode on a kprobe in the
    guest (which has them), and the kernel's map_perf_test in the same boot."""
    image("bookworm")
    (rec,) = records("--kernel", "bookworm", "--peer", "map_perf_test", "--types", "hash",
                     "--prealloc", "--cpus", "1", "--runs", "1", "--seconds", "0.05",
                     "--results", str(tmp_path / "vm"))
    assert rec.peer is not None and rec.peer.tool == "map_perf_test"
    assert rec.peer.events_per_sec.median > 0 and rec.peer.ratio is not None
    assert rec.key == "tid" and rec.triples_per_event == rec.peer.triples_per_event
    assert (rec.machine.where, rec.trigger) == ("vm:bookworm", "kprobe")
    assert rec.machine.accel in (Accel.KVM, Accel.TCG) and rec.verification.ok
