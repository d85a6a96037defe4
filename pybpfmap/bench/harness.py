"""How each mode measures a map, and the record it makes of the runs.

One :class:`Harness` per :class:`~pybpfmap.bench.record.Mode`
(:data:`HARNESSES`): :class:`InKernel` times the triple with
BPF_PROG_TEST_RUN (:mod:`pybpfmap.bench.inkernel`), :class:`Syscall`
triggers it from getuid() (:mod:`pybpfmap.bench.syscall`, on a
:mod:`pybpfmap.bench.triggers` trigger).  :mod:`pybpfmap.bench.run` makes
one of each mode asked for per invocation; it prepares every map once,
measures it run by run (and once, discarded, to warm up), and makes one
record per CPU count of its samples, verified by :mod:`pybpfmap.bench.verify`.
"""

from __future__ import annotations

import abc
import statistics
from typing import Any

from pybpfmap.bench import inkernel, syscall, triggers
from pybpfmap.bench.machine import Machine
from pybpfmap.bench.options import Options
from pybpfmap.bench.record import BenchRecord, Mode, Spread, Verification, agree
from pybpfmap.bench.subject import Subject
from pybpfmap.bench.verify import verify


class Harness(abc.ABC):
    """One mode's measurement for one bench invocation."""

    mode: Mode
    exact: bool                              # runs must equal the runs asked for exactly
    trigger: triggers.Trigger | None = None  # compiled into the program (the syscall mode's)

    def __init__(self, opts: Options) -> None:
        self.opts = opts

    @property
    @abc.abstractmethod
    def triples(self) -> int:
        """Triples per program run."""

    @abc.abstractmethod
    def prepare(self, s: Subject) -> None:
        """Once per map, after its program is loaded and before the --fill."""

    @abc.abstractmethod
    def measure(self, s: Subject, cpus: list[int], seconds: float,
                settle: float = 0.0) -> Any:
        """One run on ``cpus``: the empty program's window, then the triple's,
        each after ``settle`` seconds of quiet; the mode's own sample."""

    def warm_up(self, s: Subject, cpus: list[int]) -> None:
        """One discarded run, half as long: the first windows after start-up
        pay for cold caches (and, under TCG, for translating the code paths),
        which no figure should."""
        self.measure(s, cpus, self.opts.seconds / 2)

    @abc.abstractmethod
    def misses(self, release: str) -> tuple[bool, str]:
        """Whether ``release`` counts the program's skipped runs, and the note."""

    def verification(self, samples: list[Any], release: str) -> Verification:
        return verify([p for smp in samples for p in (smp.empty, smp.triple)],
                      self.misses(release), exact=self.exact)

    @abc.abstractmethod
    def record(self, s: Subject, samples: list[Any], base: dict,
               mach: Machine) -> BenchRecord:
        """The record of map ``s`` at one CPU count (``base``: what every
        mode's record of it says)."""


class InKernel(Harness):
    """BPF_PROG_TEST_RUN on the SCHED_CLS programs, by three clocks."""

    mode = Mode.INKERNEL
    exact = True   # calls x repeat, no other source of runs

    @property
    def triples(self) -> int:
        return self.opts.inkernel_triples

    def prepare(self, s: Subject) -> None:
        """test_run repeats that make one call last about 10 ms, per program."""
        s.repeat = inkernel.calibrate(s.bench.prog_fd("bench_triple"))
        s.empty_repeat = inkernel.calibrate(s.bench.prog_fd("bench_empty"))

    def measure(self, s: Subject, cpus: list[int], seconds: float,
                settle: float = 0.0) -> inkernel.Sample:
        return inkernel.measure(s.bench, cpus, seconds, s.repeat, s.empty_repeat, settle)

    def misses(self, release: str) -> tuple[bool, str]:
        return False, "BPF_PROG_TEST_RUN programs have no recursion check"

    def record(self, s: Subject, samples: list[inkernel.Sample], base: dict,
               mach: Machine) -> BenchRecord:
        ns = Spread.of([smp.net("test_run") for smp in samples])
        stats = [smp.net("bpf_stats") for smp in samples]
        bpf_stats = Spread.of(stats) if all(v is not None for v in stats) else None
        notes = []
        if bpf_stats is None:
            notes.append("no bpf_stats clock: BPF_ENABLE_STATS unavailable (kernel before "
                         "v5.8?)")
        resolution = 1 / self.triples
        if ns.median > 0 and resolution > 0.01 * ns.median:
            notes.append(f"test_run's 1 ns per run is {resolution:.2f} ns per triple, over 1% "
                         f"of the figure: use more --triples")
        return BenchRecord(
            mode=self.mode, triples_per_event=self.triples, trigger="test_run",
            runs=len(samples), ns_per_triple=ns, ns_per_triple_bpf_stats=bpf_stats,
            ns_per_triple_wall=Spread.of([smp.net("wall") for smp in samples]),
            ns_per_triple_median_call=Spread.of([smp.net("test_run_median")
                                                 for smp in samples]),
            clocks_agree=agree(ns, bpf_stats), resolution_ns=round(resolution, 4),
            repeat=s.repeat,
            triple_run_ns=round(statistics.median(smp.triple.run_ns() for smp in samples), 2),
            empty_run_ns=round(statistics.median(smp.empty.run_ns() for smp in samples), 2),
            triples_per_sec_per_cpu=round(1e9 / ns.median) if ns.median > 0 else None,
            verification=self.verification(samples, mach.kernel_release), notes=notes,
            **base)


class Syscall(Harness):
    """getuid() from one pinned trigger process per CPU, the program on a trigger."""

    mode = Mode.SYSCALL
    exact = False  # other processes' getuid() on the same CPUs run it too

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        self.trigger, self.why = triggers.choose(opts.trigger)
        self.loop = syscall.compiled_loop()

    @property
    def triples(self) -> int:
        return self.opts.syscall_triples

    def prepare(self, s: Subject) -> None:
        """Nothing to calibrate: the triggers run for as long as asked."""

    def measure(self, s: Subject, cpus: list[int], seconds: float,
                settle: float = 0.0) -> syscall.Sample:
        return syscall.measure(s.bench, self.loop, cpus, self.opts.warmup, seconds, settle)

    def misses(self, release: str) -> tuple[bool, str]:
        return self.trigger.misses(release)

    def record(self, s: Subject, samples: list[syscall.Sample], base: dict,
               mach: Machine) -> BenchRecord:
        check = self.verification(samples, mach.kernel_release)
        ns = Spread.of([smp.net_ns() for smp in samples])
        stats = [smp.stats_net_ns() for smp in samples]
        bpf_stats = Spread.of(stats) if all(v is not None for v in stats) else None
        prog = [smp.triple.stats.ns_per_run for smp in samples if smp.triple.stats]
        notes = [f"trigger {self.trigger}: {self.why}"]
        if check.elsewhere:
            notes.append(f"{check.elsewhere} program runs on other CPUs (other processes' "
                         "getuid())")
        triple = [smp.triple for smp in samples]
        return BenchRecord(
            mode=self.mode, triples_per_event=self.triples, trigger=self.trigger.name,
            trigger_loop=self.loop.label, runs=len(samples),
            ns_per_triple=ns, ns_per_triple_bpf_stats=bpf_stats,
            events_per_sec=Spread.of([p.rate() for p in triple], 0),
            events_per_sec_burst=Spread.of([p.burst_rate() for p in triple], 0),
            burst_p10=round(statistics.median(p.burst_rate_at(90) for p in triple)),
            burst_p90=round(statistics.median(p.burst_rate_at(10) for p in triple)),
            events_per_sec_total=round(statistics.median(p.total_rate() for p in triple)),
            empty_events_per_sec=Spread.of([smp.empty.rate() for smp in samples], 0),
            prog_ns_per_event=round(statistics.median(prog), 2) if prog else None,
            verification=check, notes=notes, **base)


HARNESSES: dict[Mode, type[Harness]] = {h.mode: h for h in (InKernel, Syscall)}
