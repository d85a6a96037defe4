"""The stress scenarios: what each one runs, what it needs, and what the era
predicts for its rows.

* ``allocator`` (:mod:`.allocator`, the seed's): map ops from kprobes on every
  spin_unlock function (or the weaker tracepoint variant), under workloads;
* ``reentry`` (:mod:`.reentry`): a second update of a key while a program
  holds its bucket lock.

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
from pybpfmap.stress import allocator, reentry
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
    probes: list[Probe] = field(default_factory=list)   # chosen once for the run


@dataclass(frozen=True)
class Scenario:
    """One stress scenario.  ``sufficient_seconds``: a row that long gives its
    whole answer (None: the longer a row, the more it shows)."""

    name: str
    sufficient_seconds: float | None = None

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


ALLOCATOR = Allocator(allocator.NAME)
REENTRY = Reentry(reentry.NAME, sufficient_seconds=3.0)  # the answer: the first nested update
SCENARIOS = Registry("--scenario", (ALLOCATOR, REENTRY))
