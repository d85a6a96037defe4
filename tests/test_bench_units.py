"""pybpfmap bench without the kernel: records, rendering, CPU choice, the
element counter rule, the trigger protocol, the peer glue, the command line.

No timing figures are judged here (none are measured).
"""

from __future__ import annotations

import errno
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pybpfmap.bench import machine, program, record, syscall, table
from pybpfmap.bench.record import BenchRecord, Memory, PeerFigure, Refusal, Spread, Verification
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.loader import bpf_source
from pybpfmap.records import to_json

MACHINE = machine.Machine("6.1.0-50-amd64", "vm:bookworm", "tcg", "qemu", 2, 2, 1, False, True)


def rec(prealloc: bool, speed: float, *, mode: str = "syscall", cpus: int = 1,
        problems: list[str] | None = None, peer_rate: float | None = None) -> BenchRecord:
    ns = Spread.of([1e9 / speed] * 3)
    r = BenchRecord(mode, "hash", prealloc, 1000, cpus, MACHINE, map_max_entries=1000,
                    runs=3, trigger="kprobe", ns_per_triple=ns, ns_per_triple_bpf_stats=ns,
                    verification=Verification(10, 10, 0, 0, {}, None, "not counted",
                                              problems or []),
                    memory=Memory(16384, 16384, 16384, True, 73728, 73728, 73728, 0, 0,
                                  "cgroup v2"))
    if mode == "inkernel":
        r.triples_per_sec_per_cpu = speed
    else:
        r.events_per_sec = Spread.of([speed] * 3, 0)
    if peer_rate:
        r.peer = PeerFigure("map_perf_test", "hash_map_perf pre-alloc",
                            Spread.of([peer_rate] * 3, 0), 10, speed / peer_rate,
                            record.within(speed / peer_rate), "6.1.176-1", ["x"])
    return r


def test_counts_layout_comes_from_the_program() -> None:
    """The counters' layout read from bench_triple.c: the map calls the records
    name, and errno slots that are all real, distinct errno names (the kernel's
    ENOTSUPP, 524, has no libc name).  test_bench.py checks the slots on the
    kernel: a full map's updates come back as E2BIG, its lookups as ENOENT."""
    lay = program.layout()
    assert lay.ops == ("update", "lookup", "delete")
    assert lay.slots[0] == "other" and len(set(lay.slots)) == len(lay.slots)
    unknown = [n for n in lay.slots[1:] if not hasattr(errno, n) and n != "ENOTSUPP"]
    assert not unknown, unknown
    assert {"E2BIG", "ENOENT", "EBUSY", "EDEADLK", "ETIMEDOUT"} <= set(lay.slots)
    assert lay.words == 2 + 3 * len(lay.slots)


def test_counts_layout_follows_the_c_source_or_refuses_it() -> None:
    """A slot added in C is a slot in Python; a C text with a gap, a slot
    returned twice or no default is refused, naming the file."""
    text = bpf_source(program.SOURCE).read_text()
    added = text.replace("#define NSLOTS 16", "#define NSLOTS 17").replace(
        "\tdefault: return 0;", "\tcase ENOSYS: return 16;\n\tdefault: return 0;")
    assert program.parse_layout(added).slots == (*program.layout().slots, "ENOSYS")
    for bad in (text.replace("#define NSLOTS 16", "#define NSLOTS 17"),
                text.replace("case EINTR: return 15;", "case EINTR: return 14;"),
                text.replace("default: return 0;", "default: return 15;"),
                text.replace("#define OP_LOOKUP 1", "#define OP_LOOKUP 2")):
        assert bad != text
        with pytest.raises(EnvironmentProblem, match="bpf/bench_triple.c"):
            program.parse_layout(bad)


def test_records_round_trip() -> None:
    recs = [rec(True, 2e6, peer_rate=2.1e6), rec(False, 1e6, mode="inkernel"),
            BenchRecord("syscall", "lru_hash", False, 1000, None, MACHINE,
                        refused=Refusal(524, "ENOTSUPP", "--no-prealloc", "refused"))]
    back = record.load(to_json(recs))
    assert back == recs
    with pytest.raises(ValueError):
        record.load({"not": "a list"})


def test_pre_no_ratio_and_flagged_runs() -> None:
    good = [rec(True, 3e6, peer_rate=3e6), rec(False, 1.5e6, peer_rate=1e6)]
    assert record.pre_no_ratio(good, mode="syscall", type="hash", cpus=1,
                               max_entries=1000) == pytest.approx(2.0)
    assert record.pre_no_ratio(good, mode="syscall", type="hash", cpus=1, max_entries=1000,
                               peer=True) == pytest.approx(3.0)
    assert record.pre_no_ratio(good, mode="syscall", type="hash", cpus=2,
                               max_entries=1000) is None
    flagged = [rec(True, 3e6), rec(False, 1.5e6, problems=["1000 map calls failed"])]
    assert flagged[1].flagged
    assert record.pre_no_ratio(flagged, mode="syscall", type="hash", cpus=1,
                               max_entries=1000) is None


def test_clock_agreement_and_peer_tolerance() -> None:
    assert record.agree(Spread.of([100.0]), Spread.of([109.0])) is True
    assert record.agree(Spread.of([100.0]), Spread.of([111.0])) is False
    assert record.agree(Spread.of([100.0]), None) is None
    assert record.within(0.91) and not record.within(1.11) and record.within(None) is None


def test_text_table_is_seed_shaped() -> None:
    recs = [rec(True, 2e6, peer_rate=2.2e6), rec(False, 1e6, peer_rate=1e6),
            rec(True, 1.5e6, cpus=2), rec(False, 0.5e6, cpus=2, problems=["bad"]),
            BenchRecord("syscall", "lru_hash", False, 1000, None, MACHINE,
                        refused=Refusal(524, "ENOTSUPP", "--no-prealloc", "LRU: refused")),
            BenchRecord("syscall", "lru_hash", True, 1000, 1, MACHINE,
                        events_per_sec=Spread.of([1e6]), ns_per_triple=Spread.of([5.0]))]
    text = table.render_text(recs)
    assert "2.00x" in text                           # prealloc twice as fast at 1 CPU
    assert f"{table.SEED_RATIOS[1]:.2f}x" in text    # beside the seed's
    assert "map_perf_test" in text and "x0.91" in text
    assert "refused: ENOTSUPP" in text and "LRU: refused" in text
    assert "✗" in text and "bad" in text             # a flagged run says so
    assert "~16.0 KiB" in text                       # pre-6.4 memlock marked as estimate
    assert "tcg" in text


def test_markdown_has_one_row_per_record() -> None:
    recs = [rec(True, 2e6), rec(False, 1e6), rec(True, 2e6, mode="inkernel")]
    md = table.render_markdown(recs)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(recs)
    assert "(estimate)" in md


def test_element_counter_rule() -> None:
    """htab_map_alloc(): per-CPU counter when max_entries / 2 > online CPUs * 32."""
    m = replace(MACHINE, online_cpus=2)
    assert machine.element_counter(m, False, False, 130) == "percpu_counter"
    assert machine.element_counter(m, False, False, 129).startswith("atomic_t")
    assert machine.element_counter(m, True, False, 10**6).startswith("none")
    assert machine.element_counter(m, False, True, 10**6).startswith("none")
    old = replace(MACHINE, percpu_counter=False)
    assert machine.element_counter(old, False, False, 10**6).startswith("atomic_t")


def test_percpu_counter_probe_reads_btf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"\0bpf_htab\0use_percpu_counter\0pcount\0")
    monkeypatch.setattr(machine, "BTF_VMLINUX", btf)
    assert machine.has_percpu_element_counter()
    btf.write_bytes(b"\0bpf_htab\0count\0")
    assert not machine.has_percpu_element_counter()
    monkeypatch.setattr(machine, "BTF_VMLINUX", tmp_path / "missing")
    assert not machine.has_percpu_element_counter()


def test_cpu_choice_prefers_separate_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 CPUs, 2 cores: 0 and 2 share one, 1 and 3 the other.
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(machine, "siblings", lambda cpu: {cpu % 2, cpu % 2 + 2})
    sets = machine.choose_cpus([1, 2, 3])
    assert sets == {1: [0], 2: [0, 1], 3: [0, 1, 2]}
    assert machine.smt_pairs(sets[2]) == [] and machine.smt_pairs(sets[3]) == [[0, 2]]
    assert machine.choose_cpus([2], first=True) == {2: [0, 1]}
    with pytest.raises(Exception, match="--cpus"):
        machine.choose_cpus([5])


def test_trigger_output_is_parsed() -> None:
    calls = syscall._parse(1, "1000 50000 250000000 100 4800.5 4700.0 5100.0\n")
    assert (calls.cpu, calls.warmup_calls, calls.calls, calls.bursts) == (1, 1000, 50000, 100)
    assert calls.rate == pytest.approx(200_000)
    assert calls.burst_rate == pytest.approx(1e9 / 4800.5)
    with pytest.raises(Exception, match="syscall"):
        syscall._parse(0, "garbage")


def test_python_trigger_speaks_the_protocol() -> None:
    """The fallback loop prints what trigger_loop.c prints."""
    start = time.monotonic_ns()
    calls = syscall._parse(0, syscall._python_loop(start, 2_000_000, 5_000_000))
    assert calls.calls > 0 and calls.bursts > 0 and calls.window_ns > 0
    assert calls.p10_ns <= calls.median_ns <= calls.p90_ns


def test_no_compiler_means_labelled_python_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscall.shutil, "which", lambda name: None)
    loop = syscall.compiled_loop()
    assert loop.exe is None and loop.label.startswith("python (fallback: no C compiler")


def test_compiled_trigger_builds_and_runs(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    loop = syscall.compiled_loop()
    if loop.exe is None:
        pytest.skip(loop.label)
    proc = subprocess.run([str(loop.exe), "1000000", "5000000"], capture_output=True,
                          text=True, timeout=30, input=f"{time.monotonic_ns()}\n")
    ready, line = proc.stdout.splitlines()
    assert ready == "ready" and syscall._parse(0, line).calls > 0


@pytest.mark.parametrize("args, param", [
    (["--mode", "inkernel", "--cpus", "4096", "--max-entries", "1000"], "--cpus"),
    (["--fill", "150"], "--fill"),
    (["--cpus", "0"], "--cpus"),
    (["--runs", "0"], "--runs"),
    (["--mode", "inkernel", "--peer", "map_perf_test"], "--peer"),
    (["--key", "tid", "--fill", "50", "--mode", "inkernel", "--cpus", "1",
      "--max-entries", "1000"], "--fill"),
    (["--types", "hash,nosuch"], "--types"),
])
def test_usage_errors_name_the_option(pybpfmap, args: list[str], param: str) -> None:
    got = pybpfmap("bench", *args, expect=2)
    last = got.stderr.strip().splitlines()[-1]  # argparse's usage may come before it
    assert "error" in last and param in last and "Traceback" not in got.stderr


def test_list_options_take_both_spellings() -> None:
    from pybpfmap.cli import build_parser

    p = build_parser()
    a = p.parse_args(["bench", "--types", "hash,percpu_hash", "--cpus", "1", "2"])
    b = p.parse_args(["bench", "--types", "hash", "percpu_hash", "--cpus", "1,2"])
    assert a.types == b.types == ["hash", "percpu_hash"] and a.cpus == b.cpus == [1, 2]
    assert p.parse_args(["bench", "--json"]).json is True


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from pybpfmap.bench.plot import plot

    recs = [replace(rec(p, 2e6 if p else 1e6, cpus=c, mode=m), max_entries=n)
            for p in (True, False) for c in (1, 2) for n in (1000, 100000)
            for m in ("inkernel", "syscall")]
    plot(recs, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
