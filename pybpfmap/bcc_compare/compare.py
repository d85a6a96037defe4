"""``compare()``: every selected tool, where it can attach.

Tools that need kprobes run inside the test VM of each ``--kernel`` (through
:func:`pybpfmap.vm.relay.run_on_kernels`: the guest runs ``pybpfmap
bcc-compare`` with the same arguments and ``--tools`` narrowed to those
tools, and its ``--json`` document comes back); everything else runs on this
kernel.  Without ``--kernel``, a kprobe tool runs here if this kernel has
kprobes (or, for a tool that tries kfunc first, if that path works here) and
is skipped with the reason otherwise.

A VM run that hung, panicked or timed out does not raise: each tool sent
there gets a ``failed`` record carrying the VM's outcome, its message and
where the console and dmesg are, next to the host's records, which were
measured already and stay valid.  The exit status is then 1.
"""

from __future__ import annotations

import os
import sys
import time

from pybpfmap import commits, era
from pybpfmap import kernel as kernel_probe
from pybpfmap.bcc_compare import result
from pybpfmap.bcc_compare.deadline import start_deadline
from pybpfmap.bcc_compare.failures import (
    BccCannotAttach,
    BccNotCompilable,
    NoPreallocRefused,
    NotComparable,
    ToolFailed,
)
from pybpfmap.bcc_compare.result import FAILED, NOT_COMPARABLE, SKIPPED, BccRecord
from pybpfmap.bcc_compare.run import measure_tool
from pybpfmap.bcc_compare.tools import Tool, select
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.headers import ensure_headers
from pybpfmap.tracefs import ensure_tracefs
from pybpfmap.vm import catalog
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.relay import ExpectedSplats, no_splats, run_on_kernels

DEFAULT_RUNS = 8        # rounds: windows per mode, each paired with a baseline
DEFAULT_DURATION = 1.0  # seconds per window
VM_START = 600.0        # the host's guess of one tool start in the VM, for the VM's time limit


def check(duration: float, runs: int) -> None:
    if not duration > 0:
        raise UsageError("--duration", f"must be a positive number of seconds, not {duration}")
    if runs < 2:
        raise UsageError("--runs", f"at least 2 rounds are needed for a confidence interval, "
                         f"not {runs}")


def bcc_version() -> str:
    """The BCC (python3-bpfcc) version whose tools ran: their BPF text and
    attach points differ between versions (e.g. biolatency: kprobes in 0.26,
    block tracepoints in later ones)."""
    try:
        import bcc
    except ImportError:
        return "not installed"
    return str(getattr(bcc, "__version__", "unknown"))


def skip_reason(tool: Tool, kprobes_reason: str, kfunc_error: str | None = None) -> str:
    """Why ``tool`` cannot run on a kernel without kprobes."""
    tried = ""
    if kfunc_error is not None:
        tried = f"; its kfunc (fentry) path failed here too: {kfunc_error}"
    return (f"needs kprobes ({tool.kprobe_targets}){tried}; none on this kernel "
            f"({kprobes_reason}) — run with --kernel {catalog.DEFAULT} to use the test VM")


def compare_here(tools: list[Tool], duration: float, runs: int,
                 log=sys.stderr) -> list[BccRecord]:
    """Measure ``tools`` on the running kernel.  A tool that BCC cannot compile
    or attach here, or whose rewritten maps the kernel refuses, is ``skipped``
    with that reason (a fact about this kernel and this BCC, not a failed run);
    any other failure is ``failed``."""
    if not tools:
        return []
    if os.geteuid() != 0:
        raise EnvironmentProblem("bcc-compare", "loading BCC tools needs root")
    ensure_tracefs(log)
    ensure_headers(log)
    k = kernel_probe.probe()
    where, accel = kernel_probe.place()
    version = bcc_version()

    def not_run(tool: Tool, status: str, reason: str) -> BccRecord:
        return result.not_run(tool, status, reason, where, k.kernel_release, accel, version)

    def measured_or_why_not(tool: Tool, no_kprobes: bool, deadline: float) -> BccRecord:
        def unmeasured(e: ToolFailed, status: str, reason: str) -> BccRecord:
            if no_kprobes:  # its kfunc path failed: whatever the reason, it needs kprobes
                return not_run(tool, SKIPPED, skip_reason(tool, k.kprobes_reason, str(e)))
            return not_run(tool, status, reason)

        try:
            m = measure_tool(tool, duration, runs, log, deadline)
        except NotComparable as e:
            return not_run(tool, NOT_COMPARABLE, str(e))
        except NoPreallocRefused as e:
            # PREEMPT_RT kernels refuse non-preallocated hash maps in tracing
            # programs: the kernel's answer.
            return unmeasured(e, SKIPPED, f"the kernel refuses BPF_F_NO_PREALLOC hash maps in "
                              f"tracing programs ({commits.RT_PREALLOC.cite()}): the verifier "
                              f"says \"{era.RT_REFUSAL}\"; {e}")
        except BccNotCompilable as e:
            # A fact about this bcc and these kernel headers.
            return unmeasured(e, SKIPPED, f"bcc {version} cannot compile {tool.name} against "
                              f"this kernel's headers ({k.kernel_release}): "
                              f"{e.clang_error or e}")
        except BccCannotAttach as e:
            # The attach point is inlined or notrace on this kernel (e.g.
            # biolatency's blk_account_io_done on 6.1 with bcc 0.26).
            return unmeasured(e, SKIPPED, f"cannot attach on this kernel with bcc {version}: "
                              f"{e}")
        except ToolFailed as e:
            return unmeasured(e, FAILED, str(e))
        except EnvironmentProblem as e:
            return not_run(tool, FAILED, e.message())
        return result.measured(m, where, k.kernel_release, accel, version)

    out = []
    deadline = None
    for tool in tools:
        no_kprobes = tool.needs_kprobes and not k.kprobes
        if no_kprobes and not tool.kfunc_first:
            out.append(not_run(tool, SKIPPED, skip_reason(tool, k.kprobes_reason)))
            continue
        deadline = deadline or start_deadline()
        started = time.monotonic()
        rec = measured_or_why_not(tool, no_kprobes, deadline)
        # what a tool cost, measured or not (the time budget)
        rec.elapsed_s = time.monotonic() - started
        rec.start_deadline_s = deadline
        out.append(rec)
    return out


def vm_timeout(tools: list[Tool], duration: float, runs: int) -> float:
    """The VM's overall time limit: boot, two tool starts and the windows per tool
    (a hang is caught sooner by the runner's heartbeat watchdog)."""
    return 600 + len(tools) * (2 * VM_START + runs * 3 * (duration + 10) + 120)


def guest_argv(argv: list[str], tools: list[Tool]) -> list[str]:
    """The guest's command line: ``argv`` (the user's, without the host-only
    options, ``--tools`` among them) with ``--tools`` narrowed to ``tools``."""
    return [*argv, "--tools", ",".join(t.name for t in tools)]


def compare_in_vms(tools: list[Tool], kernels: list[CatalogKernel], argv: list[str],
                   duration: float, runs: int, results: str | None,
                   expected_splats: ExpectedSplats, log=sys.stderr) -> list[BccRecord]:
    """Measure ``tools`` inside the test VM of each kernel (whose tracing
    programs use NO_PREALLOC hash maps in one mode: ``expected_splats`` says
    what that costs in dmesg there)."""
    out = []
    for run in run_on_kernels(kernels, guest_argv(argv, tools), what="bcc-compare",
                              results=results, timeout=vm_timeout(tools, duration, runs),
                              expected_splats=expected_splats, console=log):
        accel = run.vm.accel
        note = result.VmNote(run.kernel, run.vm.outcome.label, run.vm.message, accel,
                             str(run.vm.results_dir))
        if run.data is None:
            out += [result.not_run(t, FAILED, f"the test VM did not finish: {run.problem}",
                                   f"vm:{run.kernel}", run.vm.kernel_release or "?",
                                   accel, "?") for t in tools]
            for rec in out[-len(tools):]:
                rec.vm = note
            continue
        for rec in result.load(run.data):
            rec.vm = note
            out.append(rec)
    return out


def compare(names: list[str] | None = None, duration: float = DEFAULT_DURATION,
            runs: int = DEFAULT_RUNS, kernels: list[CatalogKernel] | None = None,
            argv: list[str] | None = None, results: str | None = None,
            expected_splats: ExpectedSplats = no_splats,
            log=sys.stderr) -> list[BccRecord]:
    """Compare BCC tools with preallocated vs BPF_F_NO_PREALLOC hash maps.

    ``names``: tools from :data:`pybpfmap.bcc_compare.tools.TOOLS` (default all);
    ``kernels``: test-VM kernels for the tools that need kprobes; ``argv``: the
    command line they are relayed with, without host-only options (default:
    built from the arguments); ``expected_splats``: what each kernel's dmesg
    may show for that.
    One record per tool and place.
    """
    check(duration, runs)
    selected = select(names)
    to_vm = [t for t in selected if kernels and t.needs_kprobes]
    records = compare_here([t for t in selected if t not in to_vm], duration, runs, log)
    if to_vm:
        if argv is None:
            argv = ["bcc-compare", "--duration", str(duration), "--runs", str(runs)]
        records += compare_in_vms(to_vm, list(kernels or []), argv, duration, runs, results,
                                  expected_splats, log)
    order = {t.name: i for i, t in enumerate(selected)}
    return sorted(records, key=lambda r: order[r.tool])
