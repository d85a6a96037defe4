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

from pybpfmap.bench import machine, program, record, syscall, table, triggers, verify
from pybpfmap.bench.options import Options
from pybpfmap.bench.record import (
    BenchRecord,
    Memory,
    Mode,
    PeerFigure,
    Refusal,
    Spread,
    Verification,
)
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.guest import Accel
from pybpfmap.loader import bpf_source
from pybpfmap.records import to_json

MACHINE = machine.Machine("6.1.0-50-amd64", "vm:bookworm", Accel.TCG, "qemu", 2, 2, 1, False, True)


def rec(prealloc: bool, speed: float, *, mode: Mode = Mode.SYSCALL, cpus: int = 1,
        problems: list[str] | None = None, peer_rate: float | None = None) -> BenchRecord:
    ns = Spread.of([1e9 / speed] * 3)
    r = BenchRecord(mode, "hash", prealloc, 1000, cpus, MACHINE, map_max_entries=1000,
                    runs=3, trigger="kprobe", ns_per_triple=ns, ns_per_triple_bpf_stats=ns,
                    verification=Verification(10, 10, 0, 0, {}, None, "not counted",
                                              problems or []),
                    memory=Memory(16384, 16384, 16384, True, 73728, 73728, 73728, 0, 0,
                                  75000, "memory cgroup v2"))
    if mode is Mode.INKERNEL:
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
    recs = [rec(True, 2e6, peer_rate=2.1e6), rec(False, 1e6, mode=Mode.INKERNEL),
            BenchRecord(Mode.SYSCALL, "lru_hash", False, 1000, None, MACHINE,
                        refused=Refusal(524, "ENOTSUPP", "--no-prealloc", "refused"))]
    back = record.load(to_json(recs))
    assert back == recs
    with pytest.raises(ValueError):
        record.load({"not": "a list"})


def test_pre_no_ratio_and_flagged_runs() -> None:
    good = [rec(True, 3e6, peer_rate=3e6), rec(False, 1.5e6, peer_rate=1e6)]
    assert record.pre_no_ratio(good, mode=Mode.SYSCALL, type="hash", cpus=1,
                               max_entries=1000) == pytest.approx(2.0)
    assert record.pre_no_ratio(good, mode=Mode.SYSCALL, type="hash", cpus=1, max_entries=1000,
                               peer=True) == pytest.approx(3.0)
    assert record.pre_no_ratio(good, mode=Mode.SYSCALL, type="hash", cpus=2,
                               max_entries=1000) is None
    flagged = [rec(True, 3e6), rec(False, 1.5e6, problems=["1000 map calls failed"])]
    assert flagged[1].flagged
    assert record.pre_no_ratio(flagged, mode=Mode.SYSCALL, type="hash", cpus=1,
                               max_entries=1000) is None


def test_clock_agreement_and_peer_tolerance() -> None:
    assert record.agree(Spread.of([100.0]), Spread.of([109.0])) is True
    assert record.agree(Spread.of([100.0]), Spread.of([111.0])) is False
    assert record.agree(Spread.of([100.0]), None) is None
    assert record.within(0.91) and not record.within(1.11) and record.within(None) is None


def test_text_table_is_seed_shaped() -> None:
    recs = [rec(True, 2e6, peer_rate=2.2e6), rec(False, 1e6, peer_rate=1e6),
            rec(True, 1.5e6, cpus=2), rec(False, 0.5e6, cpus=2, problems=["bad"]),
            BenchRecord(Mode.SYSCALL, "lru_hash", False, 1000, None, MACHINE,
                        refused=Refusal(524, "ENOTSUPP", "--no-prealloc", "LRU: refused")),
            BenchRecord(Mode.SYSCALL, "lru_hash", True, 1000, 1, MACHINE,
                        events_per_sec=Spread.of([1e6]), ns_per_triple=Spread.of([5.0]))]
    text = table.render_text(recs)
    assert "2.00x" in text                           # prealloc twice as fast at 1 CPU
    assert f"{table.SEED_RATIOS[1]:.2f}x" in text    # beside the seed's
    assert "map_perf_test" in text and "x0.91" in text
    assert "refused: ENOTSUPP" in text and "LRU: refused" in text
    assert "✗" in text and "bad" in text             # a flagged run says so
    assert "~16.0 KiB" in text                       # pre-6.4 memlock marked as estimate
    assert "tcg" in text


def test_list_has_one_row_per_record() -> None:
    recs = [rec(True, 2e6), rec(False, 1e6), rec(True, 2e6, mode=Mode.INKERNEL)]
    md = table.render_list(recs)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(recs)
    assert "(estimate)" in md


def test_report_section_is_the_seed_shaped_table() -> None:
    recs = [rec(True, 2e6), rec(False, 1e6)]
    md = table.render_markdown(recs)
    assert md.startswith("```") and "pre/no ratio" in md and "seed ratio" in md
    assert not any(line.startswith("| ") for line in md.splitlines())


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
            for m in Mode]
    plot(recs, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mode_travels_as_its_name() -> None:
    """The JSON keeps the mode's old string; it comes back as the object."""
    for mode in Mode:
        data = to_json(rec(True, 2e6, mode=mode))
        assert data["mode"] == mode.value and data["machine"]["accel"] == "tcg"
        (back,) = record.load([data])
        assert back.mode is mode and back.machine.accel is Accel.TCG
    assert {m.value for m in Mode} == {"inkernel", "syscall"}


def test_each_mode_says_its_speed() -> None:
    inkernel, calls = rec(True, 3e6, mode=Mode.INKERNEL), rec(True, 2e6)
    inkernel.events_per_sec = Spread.of([1.0])      # not the in-kernel figure
    calls.triples_per_sec_per_cpu = 1.0             # not the syscall figure
    assert inkernel.speed() == 3e6 and calls.speed() == 2e6
    calls.events_per_sec = Spread.of([1e6, 2e6, 3e6], 0)
    assert calls.noisy and not inkernel.noisy


@pytest.mark.parametrize("accel, settle", [(None, 0.05), (Accel.KVM, 0.05),
                                           (Accel.TCG, 0.2), (Accel.TCG_MTTCG, 0.2)])
def test_settle_time_is_longer_under_any_tcg(accel: Accel | None, settle: float) -> None:
    from pybpfmap.bench.run import settle_time

    assert settle_time(Options(), replace(MACHINE, accel=accel)) == settle
    assert settle_time(Options(settle=0.5), replace(MACHINE, accel=accel)) == 0.5


@pytest.mark.parametrize("accel", list(Accel))
def test_tcg_notes(accel: Accel) -> None:
    """Every TCG is emulation; only single-threaded TCG time-shares its vCPUs."""
    recs = [replace(rec(True, 2e6, cpus=2), machine=replace(MACHINE, accel=accel))]
    notes = table.notes(recs, estimate=False, noisy=False)
    assert any(n.startswith("tcg = ") for n in notes) is accel.emulated
    assert any("single-threaded TCG" in n for n in notes) is (accel is Accel.TCG)


def test_options_say_when_a_tracing_program_uses_a_no_prealloc_map() -> None:
    assert Options(modes=(Mode.SYSCALL,)).tracing_no_prealloc
    assert not Options(modes=(Mode.INKERNEL,)).tracing_no_prealloc
    assert not Options(modes=tuple(Mode), prealloc=(True,)).tracing_no_prealloc


class _Phase:
    """A window as verify() reads it."""

    def __init__(self, events: int, triggers: int, elsewhere: int = 0,
                 misses: int | None = 0, failures: dict | None = None) -> None:
        self.counts = program.Counts([events], failures or {})
        self._triggers, self._elsewhere, self.recursion_misses = triggers, elsewhere, misses

    def events(self) -> int:
        return sum(self.counts.events)

    def triggers(self) -> int:
        return self._triggers

    def elsewhere(self) -> int:
        return self._elsewhere


def test_verification_sums_every_window() -> None:
    counted = (True, "counted")
    ok = verify.verify([_Phase(100, 100), _Phase(50, 50)], counted, exact=True)
    assert ok.ok and (ok.events, ok.triggers, ok.difference) == (150, 150, 0)
    assert ok.recursion_misses == 0
    off = verify.verify([_Phase(100, 100), _Phase(49, 50, elsewhere=3)], counted, exact=True)
    assert len(off.problems) == 2 and off.difference == -1 and off.elsewhere == 3
    # the syscall mode: none missing, a few stray getuid() allowed, runs elsewhere too
    stray = verify.verify([_Phase(1005, 1000, elsewhere=7)], counted, exact=False)
    assert stray.ok and stray.difference == 5
    assert not verify.verify([_Phase(1011, 1000)], counted, exact=False).ok
    assert not verify.verify([_Phase(999, 1000)], counted, exact=False).ok
    failed = verify.verify([_Phase(10, 10, failures={"update": {"E2BIG": 4}}),
                            _Phase(10, 10, failures={"update": {"E2BIG": 1}})],
                           counted, exact=True)
    assert failed.failures == {"update": {"E2BIG": 5}}
    assert failed.problems == ["5 map calls failed: update E2BIG 5"]
    missed = [_Phase(10, 10, misses=2), _Phase(10, 10, misses=1)]
    assert verify.verify(missed, counted, exact=True).problems[0].startswith(
        "recursion_misses 3")
    quiet = verify.verify(missed, (False, "not counted"), exact=True)
    assert quiet.ok and quiet.recursion_misses is None
    unknown = verify.verify([_Phase(10, 10, misses=None), _Phase(10, 10, misses=5)],
                            counted, exact=True)
    assert unknown.ok and unknown.recursion_misses is None


def test_recursion_misses_by_trigger_and_release() -> None:
    assert triggers.RAW_TP.misses("6.1.0-50-amd64")[0]
    assert not triggers.RAW_TP.misses("5.15.0")[0]
    for t in (triggers.KPROBE, triggers.TRACEPOINT):
        assert not t.misses("6.1.0-50-amd64")[0] and t.misses("6.8.0")[0]
        assert t.name in t.misses("6.1.0")[1]
    assert list(triggers.TRIGGERS) == ["kprobe", "tracepoint", "raw_tp"]
    assert triggers.RAW_TP.cflags()[0].startswith("-DTRIGGER_RAW_TP_NR=")
    assert triggers.KPROBE.cflags() == triggers.TRACEPOINT.cflags() == []


def test_trigger_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto takes the first trigger this kernel can run and says why; one
    asked for that it cannot run is a usage error naming --trigger."""
    monkeypatch.setattr(triggers.KPROBE, "missing", lambda: "no kprobes (test)")
    monkeypatch.setattr(triggers.TRACEPOINT, "missing", lambda: None)
    assert triggers.choose() == (triggers.TRACEPOINT, "no kprobes (test)")
    assert triggers.choose(triggers.TRACEPOINT) == (triggers.TRACEPOINT, "asked for")
    with pytest.raises(UsageError, match="kprobe: no kprobes"):
        triggers.choose(triggers.KPROBE)
    monkeypatch.setattr(triggers.TRACEPOINT, "missing", lambda: "no tracepoint (test)")
    trigger, why = triggers.choose()
    assert trigger is triggers.RAW_TP and why == "no kprobes (test); no tracepoint (test)"
    monkeypatch.setattr(triggers.KPROBE, "missing", lambda: None)
    assert triggers.choose()[0] is triggers.KPROBE


@pytest.mark.parametrize("argv, modes, trigger", [
    ([], tuple(Mode), None),
    (["--mode", "both", "--trigger", "auto"], tuple(Mode), None),
    (["--mode", "inkernel"], (Mode.INKERNEL,), None),
    (["--mode", "syscall", "--trigger", "raw_tp"], (Mode.SYSCALL,), triggers.RAW_TP),
    (["--peer", "map_perf_test"], (Mode.SYSCALL,), None),
])
def test_command_line_to_options(argv: list[str], modes: tuple, trigger) -> None:
    from pybpfmap.cli import build_parser
    from pybpfmap.commands import bench

    opts = bench.options(build_parser().parse_args(["bench", *argv]))
    assert opts.modes == modes and opts.trigger is trigger
