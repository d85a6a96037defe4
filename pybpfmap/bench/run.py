"""From options to records: which maps, how full, which modes, CPUs and runs.

For each max_entries and --fill, every map kind is made at once, each by
pybpfmap with bpf(2) inside its own child memory cgroup
(:mod:`pybpfmap.bench.subject`), preloaded with its resident keys, and
loaded with bpf/bench_triple.c.  The runs are then interleaved (run 1 of
every map and CPU count, then run 2, ...), so that a disturbance of the
machine spreads over the maps instead of biasing one of them.  Each mode
asked for measures through its :mod:`pybpfmap.bench.harness`, and each
(map, mode, CPU count) becomes one :class:`~pybpfmap.bench.record.BenchRecord`.

A filled map gets room for the triple's own keys on top of max_entries (one
live key per CPU): without it a full map would refuse every insert (E2BIG)
and the bench would time the refusal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from pybpfmap import memcg, memlock
from pybpfmap.bench import machine, program
from pybpfmap.bench.harness import HARNESSES, Harness
from pybpfmap.bench.options import Options
from pybpfmap.bench.record import BenchRecord, Mode, Refusal
from pybpfmap.bench.subject import Subject, made
from pybpfmap.errors import KernelError, UsageError, errno_name
from pybpfmap.maps import MapSpec


def settle_time(opts: Options, mach: machine.Machine) -> float:
    """Seconds of quiet before each window: a NO_PREALLOC map's deletes are
    freed later (RCU callbacks, bpf_mem_alloc's irq_work), and a trigger
    process's exit, a peer's unload are cleaned up later too; without a pause
    that work lands in the next window, charged to the next map.  0.05 s, and
    0.2 s under TCG (single- or multi-threaded), where a grace period takes
    longer in emulation."""
    if opts.settle is not None:
        return opts.settle
    return 0.2 if mach.accel is not None and mach.accel.emulated else 0.05


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
    harnesses: list[Harness]        # one per mode asked for, in the order asked
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
    harnesses = [HARNESSES[mode](opts) for mode in opts.modes]
    trigger = next((h.trigger for h in harnesses if h.trigger is not None), None)
    work = program.Workload(opts.key, opts.inkernel_triples, opts.syscall_triples, trigger)
    setting = Setting(opts, mach, sets, harnesses, work, settle_time(opts, mach))
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
                    records += _refused(st, spec, n, fill, e)
                    for _ in range(opts.runs * len(st.sets) * len(st.harnesses)):
                        step(f"{spec.label} refused")
                    continue
                subjects.append(_prepare(stack, st, spec, n, fill))
        if subjects and not st.warm:
            _warm_up(st, subjects[0], st.sets[max(st.sets)])
            st.warm = True
        for r in range(opts.runs):
            for s in subjects:
                for k, cpus in st.sets.items():
                    _measure(st, s, k, cpus, step, f"run {r + 1}")
            if after_run is not None and not fill:
                after_run(r, n, {(s.spec.type, s.spec.prealloc, k): got[-1].triple.rate()
                                 for s in subjects
                                 for k, got in s.runs.get(Mode.SYSCALL, {}).items()})
        for s in subjects:
            s.stage("after")
            resident_after = len(s.bmap.keys()) if s.resident else None
            for k, cpus in st.sets.items():
                base = _base(st, s, k, cpus, resident_after)
                for h in st.harnesses:
                    if k in s.runs.get(h.mode, {}):
                        records.append(h.record(s, s.runs[h.mode][k], base, st.mach))
    return records


def _measure(st: Setting, s: Subject, k: int, cpus: list[int], step: Callable[[str], None],
             what: str) -> None:
    """One run of map ``s`` on ``cpus``, in each mode asked for."""
    label = f"{s.spec.label} {s.asked} fill {s.fill}% {k} CPU {what}"
    for h in st.harnesses:
        step(f"{label} {h.mode}")
        s.runs.setdefault(h.mode, {}).setdefault(k, []).append(
            h.measure(s, cpus, st.opts.seconds, st.settle))


def _warm_up(st: Setting, s: Subject, cpus: list[int]) -> None:
    """One discarded run on the first map with the most CPUs, in each mode."""
    for h in st.harnesses:
        h.warm_up(s, cpus)
    s.bench.reset()


def _prepare(stack: contextlib.ExitStack, st: Setting, spec: MapSpec, asked: int,
             fill: int) -> Subject:
    bmap, meter = stack.enter_context(made(spec))
    resident = round(asked * fill / 100)
    s = Subject(spec, asked, fill, resident, bmap, meter)
    s.stage("empty")
    with meter.paused():  # the bench's own programs and maps are not the map's
        s.bench = stack.enter_context(program.load(spec, bmap.fd, st.work))
        for h in st.harnesses:
            h.prepare(s)
    bmap.fill(resident)
    s.stage("full")
    return s


def _refused(st: Setting, spec: MapSpec, asked: int, fill: int,
             e: KernelError) -> list[BenchRecord]:
    refusal = Refusal(e.err or 0, errno_name(e.err) if e.err else "", e.param, e.message())
    return [BenchRecord(h.mode, spec.type, spec.prealloc, asked, None, st.mach,
                        fill_percent=fill, key_size=spec.key_size, value_size=spec.value_size,
                        map_max_entries=spec.max_entries, key=st.opts.key,
                        triples_per_event=h.triples, refused=refusal)
            for h in st.harnesses]


def _base(st: Setting, s: Subject, k: int, cpus: list[int],
          resident_after: int | None) -> dict:
    """What each mode's record of map ``s`` at ``k`` CPUs says alike."""
    mach = st.mach
    return dict(type=s.spec.type, prealloc=s.spec.prealloc, max_entries=s.asked, cpus=k,
                machine=mach, fill_percent=s.fill, key_size=s.spec.key_size,
                value_size=s.spec.value_size, map_max_entries=s.spec.max_entries,
                resident_keys=s.resident, resident_after=resident_after,
                element_counter=machine.element_counter(mach, s.spec.prealloc, s.spec.lru,
                                                        s.spec.max_entries),
                key=st.opts.key, cpu_list=cpus, smt_siblings=machine.smt_pairs(cpus),
                memory=s.memory(mach.kernel_release))
