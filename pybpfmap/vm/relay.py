"""Run a pybpfmap command inside the test VM and bring its result back.

Every ``--kernel K`` goes through :func:`run_command`: it boots kernel K, runs
``python3 -m pybpfmap ARGV --json`` as root in the guest and returns the
runner's view of the boot (:class:`pybpfmap.vm.outcome.VmResult`) together with
the command's own JSON document, which comes back on the guest's stdout port
(nothing else is written there).  The VM's console, dmesg and result land in
``results_dir``.  One protocol for every command: no hidden guest-only flags,
no result files with command-specific names.  The caller says what the guest
runs (ARGV) and which splats it expects; the relay knows no command.

A run whose guest hung, panicked, timed out or was lost has no (complete)
document; :func:`result_of` turns that into one :class:`VmRunFailed` error —
outcome, message, where the console is, and the runner's exit status — the
same for every command.  (``pybpfmap stress`` is the exception that proves
the rule: for it a hung guest is the measurement, a DEADLOCK row.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pybpfmap.errors import PybpfmapError, UsageError
from pybpfmap.guest import in_test_vm
from pybpfmap.splats import Allowed
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.outcome import VmResult
from pybpfmap.vm.run import results_folder, run_in_vm
from pybpfmap.vm.runner import HANG_TIMEOUT, Streams

# The splats a command expects on a kernel (beyond the runner's own).
ExpectedSplats = Callable[[CatalogKernel], tuple[Allowed, ...]]


def no_splats(kernel: CatalogKernel) -> tuple[Allowed, ...]:
    """For a command that expects no splat on any kernel."""
    return ()


class VmRunFailed(PybpfmapError):
    """The guest did not finish the command; the exit status is the runner's."""

    def __init__(self, param: str, run: GuestRun):
        self.run = run
        super().__init__(param, f"{run.kernel}: {run.problem} (console: "
                         f"{run.vm.console_path})", None, run.vm.status or 1)


@dataclass
class GuestRun:
    """One command run in the test VM."""

    kernel: str
    argv: list[str]
    vm: VmResult
    data: Any | None        # the command's JSON document
    problem: str | None     # why there is no document (None when there is one)


def guest_argv(argv: list[str]) -> list[str]:
    """``argv`` with ``--json`` (the relay reads the command's JSON document)."""
    return argv if "--json" in argv else [*argv, "--json"]


def run_command(kernel: CatalogKernel, argv: list[str], *, results_dir: Path,
                timeout: float, hang_timeout: float = HANG_TIMEOUT, cpus: int = 2,
                allow_splats: tuple[Allowed | str, ...] = (),
                console: TextIO | None = sys.stderr) -> GuestRun:
    """``python3 -m pybpfmap ARGV --json`` in a fresh ``kernel`` guest (ARGV starts
    with the command's name)."""
    argv = guest_argv(argv)
    vm = run_in_vm(["python3", "-m", "pybpfmap", *argv], kernel=kernel, cpus=cpus,
                   timeout=timeout, hang_timeout=hang_timeout, results_dir=results_dir,
                   allow_splats=allow_splats, streams=Streams(None, console))
    data, problem = None, None
    text = vm.stdout()
    if not vm.outcome.finished:
        problem = vm.message
    elif not text.strip():
        problem = f"{vm.message}; the command printed no JSON ({vm.stdout_path})"
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            problem = f"{vm.message}; its output is not JSON ({e}; {vm.stdout_path})"
    return GuestRun(kernel.name, argv, vm, data, problem)


def result_of(run: GuestRun, param: str = "--kernel") -> Any:
    """The command's JSON document, or :class:`VmRunFailed`."""
    if run.data is None:
        raise VmRunFailed(param, run)
    return run.data


def run_on_kernels(kernels: list[CatalogKernel], argv: list[str], *, what: str,
                   results: str | Path | None, timeout: float,
                   hang_timeout: float = HANG_TIMEOUT,
                   expected_splats: ExpectedSplats = no_splats,
                   console: TextIO | None = sys.stderr) -> list[GuestRun]:
    """:func:`run_command` on each kernel in turn, each in its own results
    folder (:func:`pybpfmap.vm.run.results_folder`), with the splats
    ``expected_splats`` says that kernel explains."""
    if in_test_vm():
        raise UsageError("--kernel", "already inside the test VM: run the command without "
                         "--kernel")
    return [run_command(kernel, argv, timeout=timeout, hang_timeout=hang_timeout,
                        results_dir=results_folder(results, what, kernel, len(kernels) > 1),
                        allow_splats=expected_splats(kernel), console=console)
            for kernel in kernels]
