"""From options to records: which maps, how full, which modes, CPUs and runs.

For each max_entries and --fill, every map kind is made at once, each by
pybpfmap with bpf(2) inside its own child memory cgroup (the process steps
out again at once; the map's later allocations are charged to the cgroup it
was created in), preloaded with its resident keys, and loaded with
bpf/bench_triple.c.  The runs are then interleaved (run 1 of every map and
CPU count, then run 2, ...), so that a disturbance of the machine spreads
over the maps instead of biasing one of them.  Each (map, mode, CPU count)
becomes one :class:`~pybpfmap.bench.record.BenchRecord`.

A filled map gets room for the triple's own keys on top of max_entries (one
live key per CPU): without it a full map would refuse every insert (E2BIG)
and the bench would time the refusal.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pybpfmap import era, memcg, memlock
from pybpfmap.bench import inkernel, machine, program, syscall
from pybpfmap.bench.record import (
    BenchRecord,
    Memory,
    Refusal,
    Spread,
    Verification,
    agree,
)
from pybpfmap.errors import EnvironmentProblem, KernelError, UsageError, errno_name
from pybpfmap.maps import BpfMap, MapSpec

MODES = ("inkernel", "syscall")
STRAY_TOLERANCE = 0.01   # syscall: extra program runs (others' getuid()) before a record is flagged


@dataclass
class Options:
    modes: tuple[str, ...] = MODES
    types: tuple[str, ...] = ("hash",)
    prealloc: tuple[bool, ...] = (True, False)
    cpus: tuple[int, ...] = (1,)
    max_entries: tuple[int, ...] = (1000,)
    fills: tuple[int, ...] = (0,)         # percent of max_entries preloaded
    runs: int = 3
    seconds: float = 0.3                  # measuring window per run, CPU count and program
    warmup: float = 0.1                   # syscall: discarded window after attach
    settle: float | None = None           # quiet before each window (None: settle_time())
    inkernel_triples: int = 100           # triples per test_run run (resolution)
    syscall_triples: int = 1              # triples per event (map_perf_test since 6.1: 10)
    key: str = "random"
    trigger: str = "auto"
    key_size: int = 4
    value_size: int = 8
    headroom: bool = True                 # False: a full map refuses the triple's keys (tests)
    cpus_from_zero: bool = False          # CPUs 0..k-1, as map_perf_test pins its children

    def steps(self) -> int:
        """Measurements to make, for the progress bar."""
        return (len(self.types) * len(self.prealloc) * len(self.max_entries) * len(self.fills)
                * self.runs * len(self.cpus) * len(self.modes))


@dataclass
class Subject:
    """One map under test and everything measured on it."""

    spec: MapSpec                         # as created
    asked: int                            # max_entries as asked
    fill: int
    resident: int
    bmap: BpfMap
    cg: memcg.Cgroup | None
    base: memcg.Sample | None
    bench: program.Bench | None = None
    samples: dict[str, memcg.Sample | None] = field(default_factory=dict)
    memlock: dict[str, int] = field(default_factory=dict)
    repeat: int = 0
    empty_repeat: int = 0
    inkernel: dict[int, list[inkernel.Sample]] = field(default_factory=dict)
    syscall: dict[int, list[syscall.Sample]] = field(default_factory=dict)

    def stage(self, name: str) -> None:
        """Memory at one stage: the cgroup's charge and fdinfo memlock."""
        self.samples[name] = self.cg.sample() if self.cg else None
        self.memlock[name] = self.bmap.memlock()


def _step_out(cg: memcg.Cgroup) -> None:
    """Move this process back to the cgroup's parent, leaving the map behind:
    its memory stays charged to ``cg``, which the caller keeps alive."""
    try:
        (cg.path.parent / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as e:
        raise EnvironmentProblem("memory cgroup", f"could not leave {cg.path}: {e}") from None


@contextlib.contextmanager
def _made(spec: MapSpec) -> Iterator[tuple[BpfMap, memcg.Cgroup | None, memcg.Sample | None]]:
    """``spec`` created with bpf(2) in a child memory cgroup of its own (None
    when none can be made); the cgroup lives until the map is closed."""
    with memcg.measuring() as cg:
        base = cg.sample() if cg else None
        bmap = spec.create()
        try:
            if cg is not None:
                _step_out(cg)
            yield bmap, cg, base
        finally:
            bmap.close()


def settle_time(opts: Options, mach: machine.Machine) -> float:
    """Seconds of quiet before each window: a NO_PREALLOC map's deletes are
    freed later (RCU callbacks, bpf_mem_alloc's irq_work), and a trigger
    process's exit, a peer's unload are cleaned up later too; without a pause
    that work lands in the next window, charged to the next map.  0.05 s, and
    0.2 s under TCG, where a grace period takes longer in emulation."""
    if opts.settle is not None:
        return opts.settle
    return 0.2 if mach.accel == "tcg" else 0.05


def headroom(opts: Options, fill: int) -> int:
    """Entries on top of max_entries for the triple's own keys: one live key
    per CPU; none when the map is not preloaded (then max_entries is
    exactly as asked, as in map_perf_test)."""
    return max(opts.cpus) if fill and opts.headroom else 0


AfterRun = Callable[[int, int, dict[tuple[str, bool, int], float]], None]


@dataclass
class Setting:
    """What every group of maps in one bench invocation shares."""

    opts: Options
    mach: machine.Machine
    sets: dict[int, list[int]]      # CPU count -> the CPUs
    trigger: str | None             # syscall mode: kprobe, tracepoint or raw_tp
    trigger_why: str
    loop: syscall.Loop | None       # syscall mode: the trigger program
    work: program.Workload
    settle: float
    warm: bool = False              # the discarded warm-up run was made


def run(opts: Options, step: Callable[[str], None] = lambda label: None,
        after_run: AfterRun | None = None) -> list[BenchRecord]:
    """Measure everything ``opts`` asks for; one record per (map, mode, CPU count).

    ``after_run(run, max_entries, rates)`` is called after each run of the
    maps of one max_entries (without fill), with the syscall mode's events/s
    per CPU of that run by (type, prealloc, CPUs): the peer runs there, so
    that both tools' runs alternate in time."""
    if opts.key == "tid" and any(opts.fills):
        raise UsageError("--fill", "not with --key tid: thread ids are small numbers, "
                         "the resident keys would be hit")
    mach = machine.probe()
    sets = machine.choose_cpus(list(opts.cpus), first=opts.cpus_from_zero)
    trigger, why = (syscall.choose_trigger(opts.trigger) if "syscall" in opts.modes
                    else (None, ""))
    loop = syscall.compiled_loop() if "syscall" in opts.modes else None
    work = program.Workload(opts.key, opts.inkernel_triples, opts.syscall_triples, trigger)
    setting = Setting(opts, mach, sets, trigger, why, loop, work, settle_time(opts, mach))
    memlock.ensure_unlimited()
    memcg.charges_maps()  # probed once, before any map is made in a child cgroup
    records: list[BenchRecord] = []
    for n in opts.max_entries:
        for fill in opts.fills:
            records += _group(setting, n, fill, step, after_run)
    return records


def _group(st: Setting, n: int, fill: int, step: Callable[[str], None],
           after_run: AfterRun | None) -> list[BenchRecord]:
    """Every map kind at one max_entries and fill, measured run by run."""
    opts = st.opts
    records: list[BenchRecord] = []
    with contextlib.ExitStack() as stack:
        subjects = []
        for type_ in opts.types:
            for prealloc in opts.prealloc:
                spec = MapSpec(type_, prealloc, opts.key_size, opts.value_size,
                               n + headroom(opts, fill))
                try:
                    spec.preflight()
                except KernelError as e:
                    records += _refused(spec, n, fill, opts, st.mach, e)
                    for _ in range(opts.runs * len(st.sets) * len(opts.modes)):
                        step(f"{spec.label} refused")
                    continue
                subjects.append(_prepare(stack, spec, n, fill, opts, st.work))
        if subjects and not st.warm:
            _warm_up(subjects[0], st.sets[max(st.sets)], opts, st.loop)
            st.warm = True
        for r in range(opts.runs):
            for s in subjects:
                for k, cpus in st.sets.items():
                    _measure(st, s, k, cpus, step, f"run {r + 1}")
            if after_run is not None and not fill:
                after_run(r, n, {(s.spec.type, s.spec.prealloc, k): got[-1].triple.rate()
                                 for s in subjects for k, got in s.syscall.items()})
        for s in subjects:
            s.stage("after")
            resident_after = len(s.bmap.keys()) if s.resident else None
            for k, cpus in st.sets.items():
                base = _base(s, k, cpus, opts, st.mach, resident_after)
                if k in s.inkernel:
                    records.append(_inkernel_record(base, s, s.inkernel[k], st.mach))
                if k in s.syscall:
                    records.append(_syscall_record(base, s, s.syscall[k], st.mach,
                                                   st.trigger or "", st.trigger_why, st.loop))
    return records


def _measure(st: Setting, s: Subject, k: int, cpus: list[int], step: Callable[[str], None],
             what: str) -> None:
    """One run of map ``s`` on ``cpus``, in each mode asked for."""
    opts = st.opts
    label = f"{s.spec.label} {s.asked} fill {s.fill}% {k} CPU {what}"
    if "inkernel" in opts.modes:
        step(f"{label} inkernel")
        s.inkernel.setdefault(k, []).append(inkernel.measure(
            s.bench, cpus, opts.seconds, s.repeat, s.empty_repeat, st.settle))
    if "syscall" in opts.modes:
        step(f"{label} syscall")
        s.syscall.setdefault(k, []).append(syscall.measure(
            s.bench, st.loop, cpus, opts.warmup, opts.seconds, st.settle))


def _warm_up(s: Subject, cpus: list[int], opts: Options, loop: syscall.Loop | None) -> None:
    """One discarded run on the first map with the most CPUs: the first
    windows after start-up pay for cold caches (and, under TCG, for
    translating the code paths), which no figure should."""
    if "inkernel" in opts.modes:
        inkernel.measure(s.bench, cpus, opts.seconds / 2, s.repeat, s.empty_repeat)
    if "syscall" in opts.modes:
        syscall.measure(s.bench, loop, cpus, opts.warmup, opts.seconds / 2)
    s.bench.reset()


def _prepare(stack: contextlib.ExitStack, spec: MapSpec, asked: int, fill: int,
             opts: Options, work: program.Workload) -> Subject:
    bmap, cg, base = stack.enter_context(_made(spec))
    resident = round(asked * fill / 100)
    s = Subject(spec, asked, fill, resident, bmap, cg, base)
    s.stage("empty")
    s.bench = stack.enter_context(program.load(spec, bmap.fd, work))
    if "inkernel" in opts.modes:
        s.repeat = inkernel.calibrate(s.bench.prog_fd("bench_triple"))
        s.empty_repeat = inkernel.calibrate(s.bench.prog_fd("bench_empty"))
    bmap.fill(resident)
    s.stage("full")
    return s


def _refused(spec: MapSpec, asked: int, fill: int, opts: Options, mach: machine.Machine,
             e: KernelError) -> list[BenchRecord]:
    refusal = Refusal(e.err or 0, errno_name(e.err) if e.err else "", e.param, e.message())
    return [BenchRecord(mode, spec.type, spec.prealloc, asked, None, mach, fill_percent=fill,
                        key_size=spec.key_size, value_size=spec.value_size,
                        map_max_entries=spec.max_entries, key=opts.key,
                        triples_per_event=(opts.inkernel_triples if mode == "inkernel"
                                           else opts.syscall_triples),
                        refused=refusal)
            for mode in opts.modes]


def _base(s: Subject, k: int, cpus: list[int], opts: Options, mach: machine.Machine,
          resident_after: int | None) -> dict:
    return dict(type=s.spec.type, prealloc=s.spec.prealloc, max_entries=s.asked, cpus=k,
                machine=mach, fill_percent=s.fill, key_size=s.spec.key_size,
                value_size=s.spec.value_size, map_max_entries=s.spec.max_entries,
                resident_keys=s.resident, resident_after=resident_after,
                element_counter=machine.element_counter(mach, s.spec.prealloc, s.spec.lru,
                                                        s.spec.max_entries),
                key=opts.key, cpu_list=cpus, smt_siblings=machine.smt_pairs(cpus),
                memory=_memory(s, mach))


def _memory(s: Subject, mach: machine.Machine) -> Memory:
    mem = Memory(s.memlock["empty"], s.memlock["full"], s.memlock["after"],
                 memlock_is_estimate=not era.memlock_is_real(mach.kernel_release))
    why = None
    if s.cg is None or s.base is None or s.base.current is None:
        why = memcg.unavailable_reason() or "could not make a child memory cgroup"
    elif memcg.charges_maps() is False:
        why = (f"this kernel does not charge BPF maps to the memory cgroup (probed; "
               f"charged since {era.MEMCG.cite()})")
    if why:
        mem.memcg = f"unavailable: {why}"
        return mem

    def d(stage: str, attr: str = "current") -> int | None:
        now, base = s.samples.get(stage), s.base
        a, b = getattr(now, attr, None), getattr(base, attr, None)
        return None if a is None or b is None else a - b

    mem.memcg_empty, mem.memcg_full, mem.memcg_after = d("empty"), d("full"), d("after")
    mem.memcg_percpu_after, mem.memcg_slab_after = d("after", "percpu"), d("after", "slab")
    mem.memcg = f"cgroup v{s.cg.version}"
    return mem


def _misses_note(prog_kind: str, release: str) -> tuple[bool, str]:
    """Whether this kernel counts skipped runs of such a program in recursion_misses."""
    if prog_kind == "test_run":
        return False, "BPF_PROG_TEST_RUN programs have no recursion check"
    if prog_kind == "raw_tp":
        if era.has(release, era.RAW_TP_GUARD):
            return True, f"counted (raw_tp recursion guard: {era.RAW_TP_GUARD.cite()})"
        return False, f"not counted: no raw_tp recursion guard before {era.RAW_TP_GUARD.cite()}"
    if era.kprobe_recursion_misses_counted(release):
        return True, f"counted ({era.MISSED_STATS.cite()})"
    return False, f"not counted for {prog_kind} programs before {era.MISSED_STATS.cite()}"


def _failures_text(failures: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{op} {name} {n}" for op, errs in failures.items()
                     for name, n in sorted(errs.items(), key=lambda x: -x[1]))


def _verification(events: int, triggers: int, elsewhere: int, failures: dict,
                  misses: int | None, counted: bool, note: str, exact: bool) -> Verification:
    problems = []
    diff = events - triggers
    if exact and diff:
        problems.append(f"the program counted {events} runs where {triggers} were asked for")
    elif not exact and diff < 0:
        problems.append(f"{-diff} of {triggers} trigger calls did not run the program")
    elif not exact and diff > STRAY_TOLERANCE * triggers:
        problems.append(f"{diff} more program runs than trigger calls on the trigger CPUs "
                        "(other processes' getuid() there)")
    if exact and elsewhere:
        problems.append(f"{elsewhere} runs on CPUs that were not asked to run anything")
    total = sum(n for errs in failures.values() for n in errs.values())
    if total:
        problems.append(f"{total} map calls failed: {_failures_text(failures)}")
    if counted and misses:
        problems.append(f"recursion_misses {misses}: the program was skipped that often")
    return Verification(events, triggers, diff, elsewhere, failures,
                        misses if counted else None, note, problems)


def _totals(phases: list, triggers: Callable[[Any], int], elsewhere: Callable[[Any], int],
            misses: Callable[[Any], int | None]
            ) -> tuple[program.Counts, int, int, int, int | None]:
    """Over every phase of every sample: the map-call counts, program runs,
    the runs asked for (``triggers``), runs elsewhere, and recursion misses
    (None when any phase has no count)."""
    counts = program.Counts([])
    events = asked = outside = 0
    total: int | None = 0
    for phase in phases:
        counts.add(phase.counts)
        events += phase.events()
        asked += triggers(phase)
        outside += elsewhere(phase)
        m = misses(phase)
        total = None if m is None or total is None else total + m
    return counts, events, asked, outside, total


def _inkernel_record(base: dict, s: Subject, samples: list[inkernel.Sample],
                     mach: machine.Machine) -> BenchRecord:
    triples = s.bench.work.inkernel_triples
    counts, events, triggers, elsewhere, misses = _totals(
        [p for smp in samples for p in (smp.empty, smp.triple)],
        lambda p: p.expected_events(), lambda p: p.misplaced_events(),
        lambda p: p.stats.recursion_misses)
    counted, note = _misses_note("test_run", mach.kernel_release)
    check = _verification(events, triggers, elsewhere, counts.failures, misses, counted,
                          note, exact=True)
    ns = Spread.of([smp.net("test_run") for smp in samples])
    stats = [smp.net("bpf_stats") for smp in samples]
    bpf_stats = Spread.of(stats) if all(v is not None for v in stats) else None
    notes = []
    if bpf_stats is None:
        notes.append("no bpf_stats clock: BPF_ENABLE_STATS unavailable (kernel before v5.8?)")
    resolution = 1 / triples
    if ns.median > 0 and resolution > 0.01 * ns.median:
        notes.append(f"test_run's 1 ns per run is {resolution:.2f} ns per triple, over 1% of "
                     f"the figure: use more --triples")
    return BenchRecord(
        mode="inkernel", triples_per_event=triples, trigger="test_run", runs=len(samples),
        ns_per_triple=ns, ns_per_triple_bpf_stats=bpf_stats,
        ns_per_triple_wall=Spread.of([smp.net("wall") for smp in samples]),
        ns_per_triple_median_call=Spread.of([smp.net("test_run_median") for smp in samples]),
        clocks_agree=agree(ns, bpf_stats), resolution_ns=round(resolution, 4),
        repeat=s.repeat,
        triple_run_ns=round(statistics.median(smp.triple.run_ns() for smp in samples), 2),
        empty_run_ns=round(statistics.median(smp.empty.run_ns() for smp in samples), 2),
        triples_per_sec_per_cpu=round(1e9 / ns.median) if ns.median > 0 else None,
        verification=check, notes=notes, **base)


def _syscall_record(base: dict, s: Subject, samples: list[syscall.Sample],
                    mach: machine.Machine, trigger: str, why: str,
                    loop: syscall.Loop | None) -> BenchRecord:
    triples = s.bench.work.syscall_triples
    counts, events, triggers, elsewhere, misses = _totals(
        [p for smp in samples for p in (smp.empty, smp.triple)],
        lambda p: p.triggers(), lambda p: p.elsewhere(), lambda p: p.recursion_misses)
    counted, note = _misses_note(trigger, mach.kernel_release)
    check = _verification(events, triggers, elsewhere, counts.failures, misses, counted,
                          note, exact=False)
    ns = Spread.of([smp.net_ns() for smp in samples])
    stats = [smp.stats_net_ns() for smp in samples]
    bpf_stats = Spread.of(stats) if all(v is not None for v in stats) else None
    prog = [smp.triple.stats.ns_per_run for smp in samples if smp.triple.stats]
    notes = [f"trigger {trigger}: {why}"]
    if elsewhere:
        notes.append(f"{elsewhere} program runs on other CPUs (other processes' getuid())")
    return BenchRecord(
        mode="syscall", triples_per_event=triples, trigger=trigger,
        trigger_loop=loop.label if loop else "", runs=len(samples),
        ns_per_triple=ns, ns_per_triple_bpf_stats=bpf_stats,
        events_per_sec=Spread.of([smp.triple.rate() for smp in samples], 0),
        events_per_sec_burst=Spread.of([smp.triple.burst_rate() for smp in samples], 0),
        burst_p10=round(statistics.median(smp.triple.burst_rate_at(90) for smp in samples)),
        burst_p90=round(statistics.median(smp.triple.burst_rate_at(10) for smp in samples)),
        events_per_sec_total=round(statistics.median(smp.triple.total_rate()
                                                     for smp in samples)),
        empty_events_per_sec=Spread.of([smp.empty.rate() for smp in samples], 0),
        prog_ns_per_event=round(statistics.median(prog), 2) if prog else None,
        verification=check, notes=notes, **base)
