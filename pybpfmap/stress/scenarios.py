"""The stress scenarios: what each one runs, what it needs, and what the era
predicts for its rows.

* ``allocator`` (:mod:`.allocator`, the seed's): map ops from kprobes on every
  spin_unlock function (or the weaker tracepoint variant), under workloads;
* ``reentry`` (:mod:`.reentry`): a second update of a key while a program
  holds its bucket lock;
* ``nmi`` and ``nmi-slot`` (:mod:`.nmi`): updates in NMI context while a
  program holds the bucket lock (the same key; a key of the bucket on another
  map_locked slot);
* ``writers`` (:mod:`.writers`): a program's inserts while bpf(2) writers on
  every CPU update, delete and batch-delete the same keys.

Records and the command line name a scenario (:attr:`Scenario.name`);
``SCENARIOS.named()`` gives the object back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from pybpfmap import era
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.kernel import Kernel
from pybpfmap.kfacts import KernelFacts, for_release
from pybpfmap.maps import MapSpec
from pybpfmap.registry import Registry
from pybpfmap.stress import allocator, nmi, reentry, writers
from pybpfmap.stress.kinds import MapKind
from pybpfmap.stress.probes import Probe, ProbeKind
from pybpfmap.stress.records import StressRow


@dataclass
class Setup:
    """What every row of one run here shares."""

    k: Kernel
    duration: float
    baseline: float                 # seconds of workload without probes, where used
    variant: ProbeKind              # the probes asked for: kprobe, or the weaker tracepoint
    inject: Callable[[], AbstractContextManager]   # the negative control around a row
    nmi_rate: float = nmi.DEFAULT_RATE              # NMIs a second, for the NMI scenarios
    probes: list[Probe] = field(default_factory=list)   # chosen once for the run


@dataclass(frozen=True)
class Scenario:
    """One stress scenario.  ``sufficient_seconds``: a row that long gives its
    whole answer (None: the longer a row, the more it shows)."""

    name: str
    sufficient_seconds: float | None = None
    needs_test_vm: bool = False     # its rows are SKIPPED anywhere else
    # The kinds a report runs (None: every kind): a deadlock costs a boot each.
    report_kinds: tuple[str, ...] | None = None

    def predict(self, kernel: KernelFacts, spec: MapSpec) -> era.Prediction:
        """The era's prediction for a row of this scenario on ``spec``."""
        raise NotImplementedError

    def may_deadlock(self, kernel: KernelFacts | str, specs: Iterable[MapSpec]) -> bool:
        """Whether rows on these maps may lock the machine up: they run only
        inside the test VM.  A release string (a plan for a kernel not booted
        yet) is read by :func:`pybpfmap.kfacts.for_release`."""
        facts = for_release(kernel) if isinstance(kernel, str) else kernel
        return any(self.predict(facts, s).expect.may_lock_up for s in specs)

    def baseline_seconds(self, duration: float) -> float:
        """Seconds of workload without probes a row of ``duration`` s begins with."""
        return 0.0

    def check(self, k: Kernel, variant: ProbeKind) -> None:
        """Refuse, before anything is loaded, what this kernel or ``variant`` cannot run."""

    def attach_points(self, k: Kernel, names: Sequence[str] | None, variant: ProbeKind
                      ) -> tuple[list[Probe], dict[str, str]]:
        """The probes a run attaches for every row (``names``: as asked), and
        why the others cannot be attached here."""
        return [], {}

    def new_row(self, kind: MapKind, setup: Setup) -> StressRow:
        """The row of ``kind``, not yet run."""
        raise NotImplementedError

    def run_row(self, kind: MapKind, setup: Setup) -> tuple[StressRow, str]:
        """The (not yet judged) row of ``kind`` and the kernel log lines of its window."""
        raise NotImplementedError

    def row_problems(self, row: StressRow) -> list[str]:
        """What fails a measured row of this scenario beyond the common checks
        (:func:`pybpfmap.stress.verdict.judge`)."""
        return []


class Allocator(Scenario):
    def predict(self, kernel: KernelFacts, spec: MapSpec) -> era.Prediction:
        return era.allocator_prediction(kernel, spec)

    def baseline_seconds(self, duration: float) -> float:
        return allocator.default_baseline(duration)

    def attach_points(self, k: Kernel, names: Sequence[str] | None, variant: ProbeKind
                      ) -> tuple[list[Probe], dict[str, str]]:
        probes, why = allocator.choose_probes(k, names, variant)
        if not probes:
            raise EnvironmentProblem("--probes", "nothing can be attached here: " + "; ".join(
                f"{p}: {reason}" for p, reason in why.items()))
        return probes, why

    def new_row(self, kind: MapKind, setup: Setup) -> StressRow:
        return allocator.new_row(kind, setup.variant, setup.probes)

    def run_row(self, kind: MapKind, setup: Setup) -> tuple[StressRow, str]:
        return allocator.run_row(kind, setup.probes, setup.k, setup.duration, setup.baseline,
                                 setup.inject, setup.variant)


class Reentry(Scenario):
    def predict(self, kernel: KernelFacts, spec: MapSpec) -> era.Prediction:
        return era.reentry_prediction(kernel, spec)

    def check(self, k: Kernel, variant: ProbeKind) -> None:
        if variant.weaker:
            raise UsageError("--tracepoints", "the re-entry scenario needs kprobes (its inner "
                             "program is a kprobe): run it with --kernel K")
        if not k.kprobes:
            raise EnvironmentProblem("kprobes", f"the re-entry scenario needs kprobes: "
                                     f"{k.kprobes_reason}")

    def new_row(self, kind: MapKind, setup: Setup) -> StressRow:
        return reentry.new_row(kind)

    def run_row(self, kind: MapKind, setup: Setup) -> tuple[StressRow, str]:
        return reentry.run_row(kind, setup.k, setup.duration, setup.inject)


class Nmi(Scenario):
    other_slot = False

    def predict(self, kernel: KernelFacts, spec: MapSpec) -> era.Prediction:
        return era.nmi_prediction(kernel, spec, self.other_slot)

    def check(self, k: Kernel, variant: ProbeKind) -> None:
        if variant.weaker:
            raise UsageError("--tracepoints", f"the {self.name} scenario has no weaker "
                             "variant (it needs no kprobes): run it without --tracepoints")

    def new_row(self, kind: MapKind, setup: Setup) -> StressRow:
        return nmi.new_row(self.name, kind)

    def run_row(self, kind: MapKind, setup: Setup) -> tuple[StressRow, str]:
        return nmi.run_row(self.name, kind, setup.k, setup.duration, setup.nmi_rate,
                           setup.inject)


class NmiSlot(Nmi):
    other_slot = True


class Writers(Scenario):
    def predict(self, kernel: KernelFacts, spec: MapSpec) -> era.Prediction:
        return era.writers_prediction(kernel, spec)

    def check(self, k: Kernel, variant: ProbeKind) -> None:
        if variant.weaker:
            raise UsageError("--tracepoints", f"the {self.name} scenario has no weaker "
                             "variant (its kprobe is an optional guard): run it without "
                             "--tracepoints")

    def new_row(self, kind: MapKind, setup: Setup) -> StressRow:
        return writers.new_row(kind)

    def run_row(self, kind: MapKind, setup: Setup) -> tuple[StressRow, str]:
        return writers.run_row(kind, setup.k, setup.duration, setup.inject)

    def row_problems(self, row: StressRow) -> list[str]:
        return writers.problems(row)


ALLOCATOR = Allocator(allocator.NAME)
REENTRY = Reentry(reentry.NAME, sufficient_seconds=3.0)  # the answer: the first nested update
# An NMI row's answer is in the NMIs that land inside the holder's update: at the
# default rate 10 s bring thousands of NMIs (the host injects them: test VM only).
NMI = Nmi(nmi.NAME, sufficient_seconds=10.0, needs_test_vm=True,
          report_kinds=("hash/prealloc", "percpu_hash/no_prealloc", "lru_hash/prealloc"))
NMI_SLOT = NmiSlot(nmi.SLOT_NAME, sufficient_seconds=10.0, needs_test_vm=True,
                   report_kinds=("hash/prealloc",))   # its point is the slot, not the kind
# A writers row shows more contention the longer it runs; it needs no test VM.
WRITERS = Writers(writers.NAME)
SCENARIOS = Registry("--scenario", (ALLOCATOR, REENTRY, NMI, NMI_SLOT, WRITERS))
