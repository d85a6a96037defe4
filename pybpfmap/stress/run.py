"""Stress rows on the machine we are on: each (scenario, map kind) in turn.

Used directly on a kernel with kprobes (a VM of your own) and, inside the test
VM, by every boot the host's :mod:`pybpfmap.stress.host` starts.  Scenarios
whose era predicts a deadlock never run outside the test VM, ``--force`` or not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pybpfmap import era
from pybpfmap.errors import EnvironmentProblem, KernelError, UsageError, errno_name
from pybpfmap.guest import in_test_vm
from pybpfmap.kernel import Kernel
from pybpfmap.stress import inject, nmi, scenarios, verdict
from pybpfmap.stress.allocator import default_baseline
from pybpfmap.stress.kinds import MapKind
from pybpfmap.stress.probes import KPROBE, TRACEPOINT, ProbeKind
from pybpfmap.stress.records import REFUSED, StressRun


@dataclass
class Options:
    """What ``pybpfmap stress`` was asked to do."""

    scenarios: list[scenarios.Scenario] = field(default_factory=lambda: [scenarios.ALLOCATOR])
    kinds: list[MapKind] = field(default_factory=list)
    duration: float = 10.0
    probes: list[str] | None = None
    tracepoints: bool = False
    heartbeat_limit: float = verdict.DEFAULT_HEARTBEAT_LIMIT_S
    inject: inject.Injection | None = None
    baseline: float | None = None  # seconds of workload without probes
    nmi_rate: float = nmi.DEFAULT_RATE   # NMIs a second (the NMI scenarios)

    def baseline_seconds(self) -> float:
        if self.baseline is not None:
            return self.baseline
        return default_baseline(self.duration)

    @property
    def variant(self) -> ProbeKind:
        """The kind of probe asked for: kprobes, or the weaker tracepoint variant."""
        return TRACEPOINT if self.tracepoints else KPROBE


def check_safe_here(opts: Options, k: Kernel, force: bool) -> None:
    """Refuse what could hang this machine: a run predicted to deadlock only
    inside the test VM, anything only on a VM unless ``force``."""
    if in_test_vm():
        return
    facts = k.kernel_facts()
    risky = [s.name for s in opts.scenarios
             if s.may_deadlock(facts, [m.spec for m in opts.kinds])]
    if risky:
        raise EnvironmentProblem("--kernel", f"the {', '.join(risky)} scenario is predicted "
                                 f"to deadlock kernel {k.kernel_release} (era "
                                 f"{era.era_of(facts).name}): it runs only inside "
                                 "the test VM, --force or not; use --kernel K")
    if opts.inject is not None and opts.inject.test_vm_only:
        raise UsageError("--inject", f"{opts.inject.name} only inside the test VM "
                         "(use --kernel K)")
    if not (k.in_vm or force):
        raise EnvironmentProblem("--force", "this machine is not a VM: a kernel hang here "
                                 "loses your work; run with --kernel K to use the test VM, "
                                 "or pass --force")


def run_local(opts: Options, k: Kernel) -> StressRun:
    """Every (scenario, kind) row here, judged."""
    injection, chosen = opts.inject, opts.scenarios
    for scenario in chosen:
        scenario.check(k, opts.variant)
    setup = scenarios.Setup(
        k, opts.duration, opts.baseline_seconds(), opts.variant,
        inject.nothing if injection is None else
        functools.partial(injection.during, opts.heartbeat_limit), nmi_rate=opts.nmi_rate)
    unavailable: dict[str, str] = {}
    for scenario in chosen:
        probes, why = scenario.attach_points(k, opts.probes, opts.variant)
        setup.probes += probes
        unavailable.update(why)
    facts = k.kernel_facts()   # probed here, on the kernel the rows run on
    run = StressRun(k.kernel_release, k.where, era.era_of(facts).name,
                    opts.duration, False, era.expectations(facts), [],
                    unavailable, injection and injection.name, k.accel,
                    opts.variant.weaker_note, facts.records())
    for scenario in chosen:
        for kind in opts.kinds:
            try:
                row, log = scenario.run_row(kind, setup)
            except KernelError as e:
                # The kernel would not load or attach it (PREEMPT_RT's verifier
                # refusing a NO_PREALLOC map in a tracing program, for one).
                row = scenario.new_row(kind, setup)
                row.outcome, row.reasons = REFUSED, [e.message()]
                row.errors = {"load": {errno_name(e.err or 0): 1}}
                log = ""
            run.rows.append(verdict.judge(row, facts, log, opts.heartbeat_limit))
    return run
