"""Run a pybpfmap command inside the test VM and bring its result back.

Every ``--kernel K`` goes through :func:`run_command`: it boots catalog kernel
K, runs ``python3 -m pybpfmap ARGV --json`` as root in the guest and returns
the runner's view of the boot (:class:`pybpfmap.vm.VmResult`) together with
the command's own JSON document, which comes back on the guest's stdout port
(nothing else is written there).  The VM's console, dmesg and result land in
``results_dir``.  One protocol for every command: no hidden guest-only flags,
no result files with command-specific names.

A run whose guest hung, panicked, timed out or was lost has no (complete)
document; :func:`result_of` turns that into one :class:`VmRunFailed` error —
outcome, message, where the console is, and the runner's exit status — the
same for every command.  (``pybpfmap stress`` is the exception that proves
the rule: for it a hung guest is the measurement, a DEADLOCK row.)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pybpfmap.errors import PybpfmapError
from pybpfmap.vm import run_in_vm
from pybpfmap.vm.runner import HANG_TIMEOUT, Streams, VmResult
from pybpfmap.vm.splats import Allowed


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


def run_command(kernel: str, argv: list[str], *, results_dir: Path, timeout: float,
                hang_timeout: float = HANG_TIMEOUT, cpus: int = 2,
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
    return GuestRun(kernel, argv, vm, data, problem)


def result_of(run: GuestRun, param: str = "--kernel") -> Any:
    """The command's JSON document, or :class:`VmRunFailed`."""
    if run.data is None:
        raise VmRunFailed(param, run)
    return run.data


# Options that only make sense on the host: the relay does not pass them on
# (with how many values each takes; "+" = every value up to the next option).
HOST_OPTIONS: dict[str, int | str] = {"--kernel": "+", "--results": 1}


def forwarded_argv(argv: list[str], drop: dict[str, int | str] | None = None) -> list[str]:
    """The command line the user typed (the command's name first), without the
    host-only options in ``HOST_OPTIONS`` and ``drop``: what the guest runs."""
    drop = {**HOST_OPTIONS, **(drop or {})}
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        flag = arg.split("=", 1)[0]
        if flag in drop:
            i += 1
            if "=" not in arg:
                if drop[flag] == "+":
                    while i < len(argv) and not argv[i].startswith("-"):
                        i += 1
                else:
                    i += int(drop[flag])
            continue
        out.append(arg)
        i += 1
    return out


def era_splats(kernel: str) -> tuple[Allowed, ...]:
    """The splats the kernel era of ``kernel``'s image explains for a command
    that loads tracing programs with BPF_F_NO_PREALLOC maps (the 5.7-6.0 WARN,
    once per boot)."""
    from pybpfmap import era
    from pybpfmap.maps import MapSpec
    from pybpfmap.vm import catalog
    from pybpfmap.vm.image import find_image

    image = find_image(kernel)
    release = image.release if image else f"{catalog.get(kernel).series}.0"
    return tuple(era.expected_splats(release, [MapSpec("hash", False)],
                                     catalog.get(kernel).preempt_rt))


def run_on_kernels(kernels: list[str], argv: list[str], *, what: str,
                   results: str | Path | None, timeout: float,
                   hang_timeout: float = HANG_TIMEOUT, tracing_no_prealloc: bool = False,
                   console: TextIO | None = sys.stderr) -> list[GuestRun]:
    """:func:`run_command` on each kernel in turn; each gets its own results
    folder (``results/<kernel>`` when there are several).  ``tracing_no_prealloc``:
    the command loads tracing programs that use BPF_F_NO_PREALLOC maps, so the
    era's WARN for them is expected (:func:`era_splats`)."""
    from pybpfmap.errors import UsageError
    from pybpfmap.vm import default_results_dir
    from pybpfmap.vm.guest import in_test_vm

    if in_test_vm():
        raise UsageError("--kernel", "already inside the test VM: run the command without "
                         "--kernel")
    runs = []
    for kernel in kernels:
        if results is None:
            folder = default_results_dir(what, kernel)
        else:
            folder = Path(results) / kernel if len(kernels) > 1 else Path(results)
        allow = era_splats(kernel) if tracing_no_prealloc else ()
        runs.append(run_command(kernel, argv, results_dir=folder, timeout=timeout,
                                hang_timeout=hang_timeout, allow_splats=allow,
                                console=console))
    return runs


def documents(args, timeout: float, drop: dict[str, int | str] | None = None,
              tracing_no_prealloc: bool = False) -> list[Any]:
    """A command's ``--kernel`` run: its own command line, forwarded to each
    kernel in ``args.kernels``; the JSON document each guest printed
    (:class:`VmRunFailed` for one that did not finish)."""
    runs = run_on_kernels(args.kernels, forwarded_argv(args.argv, drop), what=args.command,
                          results=args.results, timeout=timeout,
                          tracing_no_prealloc=tracing_no_prealloc)
    return [result_of(run) for run in runs]
