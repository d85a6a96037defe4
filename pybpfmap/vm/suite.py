"""``pybpfmap vm test``: the test suite inside each test VM, as a user runs it.

Each kernel boots once and runs ``python3 -m pytest -m "guest or kprobes"`` as
root in the project tree (the tests about the running kernel: its maps, its
probes, its eras; see ``GUEST_TESTS``), writes junit into the results folder,
and comes back as one line: the pytest counts, or how the guest ended when it
did not finish (hung, panicked, timed out), like drgn's ``vmtest``.  The tests
that must watch a guest from outside (the runner's outcomes, the stress rows
that hang a guest) stay in the host's pytest, marked ``vm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pybpfmap import junit
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.outcome import Outcome, VmResult
from pybpfmap.vm.run import no_prealloc_tracing_splats, run_in_vm
from pybpfmap.vm.runner import Streams

# The marker expression of the tests `vm test` runs in a guest: `guest` marks
# tests about the running kernel that need no outside observer, `kprobes` those
# that need CONFIG_KPROBES (which a CI host may lack).
GUEST_TESTS = "guest or kprobes"
# Skip reasons that mean the guest could not run what it is for.
FORBIDDEN_SKIPS = ("no kprobes here", "needs root")
TIMEOUT = 2400.0
HANG_TIMEOUT = 120.0


@dataclass
class SuiteRun:
    """One kernel's guest test run."""

    kernel: str
    vm: VmResult
    junit: junit.Junit | None
    problem: str | None = None   # why the run does not count as passed

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def status(self) -> int:
        """0 when every test passed; else the VM's status, or 1."""
        if self.ok:
            return 0
        return self.vm.status or 1

    def line(self) -> str:
        """``bookworm (6.1.0-41-amd64): 31 passed, 6 skipped in 212 s``, or
        what went wrong."""
        head = f"{self.kernel} ({self.vm.kernel_release or 'kernel unknown'})"
        counts = self.junit.counts() if self.junit else "no junit results"
        if self.ok:
            return f"{head}: {counts} in {self.vm.seconds:.0f} s"
        return f"{head}: FAILED: {self.problem} [{counts}; {self.vm.seconds:.0f} s]"

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "kernel_release": self.vm.kernel_release,
                "ok": self.ok, "status": self.status, "problem": self.problem,
                "junit": self.junit.to_json() if self.junit else None,
                "vm": self.vm.to_json()}


def junit_problem(j: junit.Junit, status: int) -> str | None:
    """Why a guest's pytest run, which exited with ``status``, failed by its
    junit, or None: a test must have run, none failed, none skipped for lack of
    kprobes or root.  The rules of ``vm test`` and of the Vagrant check."""
    if j.failures or j.errors:
        names = [c.name for c in j.cases if c.kind != "skipped"]
        return f"{j.failures + j.errors} test(s) failed: {', '.join(names[:5])}"
    if status != 0:
        return f"pytest exited with status {status}"
    if j.passed <= 0:
        return "no test ran"
    bad = j.skipped_because(*FORBIDDEN_SKIPS)
    if bad:
        return f"{len(bad)} skipped for lack of what the guest has: {bad[0].message}"
    return None


def judge(vm: VmResult, j: junit.Junit | None) -> str | None:
    """Why a guest test run failed, or None: the VM must have finished
    cleanly, and its junit pass :func:`junit_problem`."""
    if vm.outcome is not Outcome.PASSED and vm.outcome is not Outcome.FAILED:
        return f"the guest {vm.outcome.label}: {vm.message}"
    if j is None:
        return f"pytest wrote no junit.xml ({vm.message})"
    return junit_problem(j, (vm.exit_code or 1) if vm.outcome is Outcome.FAILED else 0)


def run_suite(kernel: CatalogKernel, results_dir: Path, *, pytest_args: list[str] | None = None,
              timeout: float = TIMEOUT, hang_timeout: float = HANG_TIMEOUT,
              accel=None, streams: Streams | None = None, build: bool = True) -> SuiteRun:
    """Boot ``kernel`` once and run the guest tests (plus ``pytest_args``) in it.

    The guest tests load tracing programs that use BPF_F_NO_PREALLOC hash maps
    (stress, bench's syscall mode, the bcc tools' NO_PREALLOC mode): the WARN
    ``kernel``'s era prints for the first of them is expected (5.7-6.0, once
    per boot); any other splat fails the kernel."""
    cmd = ["python3", "-m", "pytest", "-m", GUEST_TESTS, "-p", "no:cacheprovider",
           *(pytest_args or [])]
    vm = run_in_vm(cmd, kernel=kernel, results_dir=results_dir, timeout=timeout,
                   hang_timeout=hang_timeout, accel=accel, streams=streams, build=build,
                   allow_splats=no_prealloc_tracing_splats(kernel))
    try:
        j = junit.read(vm.results_dir / "junit.xml")
    except EnvironmentProblem:
        j = None
    return SuiteRun(kernel.name, vm, j, judge(vm, j))
