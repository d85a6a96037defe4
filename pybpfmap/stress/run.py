"""Stress rows on the machine we are on: each (scenario, map kind) in turn.

Used directly on a kernel with kprobes (a VM of your own) and, inside the test
VM, by every boot the host's :mod:`pybpfmap.stress.host` starts.  Scenarios
whose era predicts a deadlock never run outside the test VM, ``--force`` or not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from pybpfmap import era, procs
from pybpfmap.errors import EnvironmentProblem, KernelError, UsageError, errno_name
from pybpfmap.kernel import Kernel
from pybpfmap.stress import allocator, reentry, verdict, watch
from pybpfmap.stress.kinds import MapKind
from pybpfmap.stress.records import REFUSED, StressRow, StressRun
from pybpfmap.vm.guest import in_test_vm

INJECTIONS = ("splat", "stall", "panic")
INJECTED_SPLAT = ("WARNING: CPU: 0 PID: {pid} at pybpfmap-negative-control: injected by "
                  "`pybpfmap stress --inject splat`, not a real kernel problem")
TRACEPOINT_NOTE = ("WEAKER TRACEPOINT VARIANT: the handler runs on lock:contention_*/kmem:* "
                   "tracepoints, not inside spin_unlock, so it never runs with a spinlock's "
                   "release in progress; it checks map ops in lock and allocation paths, not "
                   "the kprobe-on-spin_unlock deadlock itself")


@dataclass
class Options:
    """What ``pybpfmap stress`` was asked to do."""

    scenarios: list[str] = field(default_factory=lambda: ["allocator"])
    kinds: list[MapKind] = field(default_factory=list)
    duration: float = 10.0
    probes: list[str] | None = None
    tracepoints: bool = False
    heartbeat_limit: float = verdict.DEFAULT_HEARTBEAT_LIMIT_S
    inject: str | None = None
    baseline: float | None = None  # seconds of workload without probes

    def baseline_seconds(self) -> float:
        if self.baseline is not None:
            return self.baseline
        return min(3.0, max(1.0, self.duration / 4))


@contextlib.contextmanager
def injected(what: str | None, heartbeat_limit: float) -> Iterator[None]:
    """Negative controls: make the run fail the way a real problem would."""
    if what is None:
        yield
    elif what == "splat":
        watch.inject_kmsg(INJECTED_SPLAT.format(pid=os.getpid()))
        yield
    elif what == "stall":
        # Stop this whole process (heartbeat thread included) for longer than
        # the heartbeat limit, from a helper process.
        with procs.Child(
                [sys.executable, "-c",
                 "import os, signal, sys, time; p = int(sys.argv[1]); "
                 "os.kill(p, signal.SIGSTOP); time.sleep(float(sys.argv[2])); "
                 "os.kill(p, signal.SIGCONT)", str(os.getpid()),
                 str(heartbeat_limit + 1.0)]) as helper:
            try:
                yield
            finally:
                helper.wait()
                os.kill(os.getpid(), signal.SIGCONT)
    elif what == "panic":
        with open("/proc/sys/kernel/sysrq", "w") as f:
            f.write("1")
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("c")
        yield  # not reached: the guest kernel has crashed
    else:
        raise UsageError("--inject", f"one of {', '.join(INJECTIONS)}")


def check_safe_here(opts: Options, k: Kernel, force: bool) -> None:
    """Refuse what could hang this machine: a run predicted to deadlock only
    inside the test VM, anything only on a VM unless ``force``."""
    if in_test_vm():
        return
    risky = [s for s in opts.scenarios
             if era.deadlock_possible(k.kernel_release, [m.spec for m in opts.kinds], s)]
    if risky:
        raise EnvironmentProblem("--kernel", f"the {', '.join(risky)} scenario is predicted "
                                 f"to deadlock kernel {k.kernel_release} (era "
                                 f"{era.era_of(k.kernel_release).name}): it runs only inside "
                                 "the test VM, --force or not; use --kernel K")
    if opts.inject == "panic":
        raise UsageError("--inject", "panic only inside the test VM (use --kernel K)")
    if not (k.in_vm or force):
        raise EnvironmentProblem("--force", "this machine is not a VM: a kernel hang here "
                                 "loses your work; run with --kernel K to use the test VM, "
                                 "or pass --force")


def run_local(opts: Options, k: Kernel) -> StressRun:
    """Every (scenario, kind) row here, judged."""
    if opts.inject is not None and opts.inject not in INJECTIONS:
        raise UsageError("--inject", f"one of {', '.join(INJECTIONS)}")
    if opts.tracepoints and "reentry" in opts.scenarios:
        raise UsageError("--tracepoints", "the re-entry scenario needs kprobes (its inner "
                         "program is a kprobe): run it with --kernel K")
    if "reentry" in opts.scenarios and not k.kprobes:
        raise EnvironmentProblem("kprobes", f"the re-entry scenario needs kprobes: "
                                 f"{k.kprobes_reason}")
    probes, unavailable = ([], {})
    if "allocator" in opts.scenarios:
        probes, unavailable = allocator.choose_probes(k, opts.probes, opts.tracepoints)
        if not probes:
            raise EnvironmentProblem("--probes", "nothing can be attached here: " + "; ".join(
                f"{p}: {why}" for p, why in unavailable.items()))
    run = StressRun(k.kernel_release, k.where, era.era_of(k.kernel_release).name,
                    opts.duration, False, era.expectations(k.kernel_release), [],
                    unavailable, opts.inject, k.accel,
                    TRACEPOINT_NOTE if opts.tracepoints else "")

    def inject() -> contextlib.AbstractContextManager:
        return injected(opts.inject, opts.heartbeat_limit)

    for scenario in opts.scenarios:
        for kind in opts.kinds:
            variant = "tracepoint" if opts.tracepoints else "kprobe"
            try:
                if scenario == "allocator":
                    row, log = allocator.run_row(kind, probes, k, opts.duration,
                                                 opts.baseline_seconds(), inject, variant)
                else:
                    row, log = reentry.run_row(kind, k, opts.duration, inject)
            except KernelError as e:
                # The kernel would not load or attach it (PREEMPT_RT's verifier
                # refusing a NO_PREALLOC map in a tracing program, for one).
                row = StressRow(scenario, kind.name, kind.spec.type, kind.spec.prealloc,
                                kind.spec.value_size, variant,
                                ",".join(p.target for p in probes), REFUSED,
                                [e.message()], errors={"load": {errno_name(e.err or 0): 1}},
                                note=kind.note)
                log = ""
            run.rows.append(verdict.judge(row, k.kernel_release, log, k.preempt_rt,
                                          opts.heartbeat_limit))
    return run
