"""``compare()``: the public entry point of bcc-compare (the report command uses it).

Each tool runs where it can attach.  Tools that need kprobes run on this
kernel only if it has them; otherwise, with ``kernel="bookworm"`` (a test VM
suite) they run in the VM through :func:`pybpfmap.vm.run_in_vm`, which calls
``pybpfmap bcc-compare --in-guest`` there and brings its JSON back; without
``kernel`` they are skipped with the reason.  Everything else runs here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from pybpfmap.bcc_compare import report
from pybpfmap.bcc_compare.run import START_TIMEOUT, VM_START_TIMEOUT, ToolFailed, measure_tool
from pybpfmap.bcc_compare.tools import Tool, select
from pybpfmap.errors import EnvironmentProblem, UsageError

RESULTS_FILE = "bcc-compare.json"
# What BCC says when a kprobe target is inlined, notrace or missing.
NOT_TRACEABLE = "it's not traceable"


def _check(duration: float, runs: int) -> None:
    if not duration > 0:
        raise UsageError("--duration", f"must be a positive number of seconds, not {duration}")
    if runs < 1:
        raise UsageError("--runs", f"must be at least 1, not {runs}")


def compare_here(tools: list[Tool], duration: float, runs: int, where: str,
                 log=sys.stderr) -> list[dict]:
    """Measure ``tools`` on the running kernel; skip the ones needing kprobes
    if it has none.  Returns records (see :mod:`.report`)."""
    from pybpfmap import kernel as kernel_probe
    from pybpfmap.headers import ensure_headers, ensure_tracefs

    if os.geteuid() != 0:
        raise EnvironmentProblem("bcc-compare", "loading BCC tools needs root")
    ensure_tracefs(log)
    ensure_headers(log)
    k = kernel_probe.probe()
    start_timeout = VM_START_TIMEOUT if k.in_vm else START_TIMEOUT
    out = []
    for tool in tools:
        kfunc_error = None
        if tool.needs_kprobes and not k.kprobes and not tool.kfunc_first:
            out.append(_skipped(tool, skip_reason(tool), where, k.kernel_release))
            continue
        try:
            m = measure_tool(tool, duration, runs, log, start_timeout)
        except ToolFailed as e:
            if tool.needs_kprobes and not k.kprobes:
                kfunc_error = str(e)
            elif NOT_TRACEABLE in str(e):
                # The tool's attach point is inlined or notrace on this kernel
                # (e.g. biolatency's blk_account_io_done on 6.1 with bcc 0.26):
                # a fact about this kernel and bcc, not a failure of the run.
                out.append(report.not_run(tool, "skipped", f"{tool.name}: cannot attach on "
                                          f"this kernel: {e}", where, k.kernel_release))
                continue
            else:
                out.append(report.not_run(tool, "failed", str(e), where, k.kernel_release))
                continue
        if kfunc_error is not None:
            out.append(_skipped(tool, skip_reason(tool, kfunc_error), where,
                                k.kernel_release))
            continue
        out.extend(report.records(m, where, k.kernel_release))
    version = bcc_version()
    for rec in out:
        rec["bcc"] = version
    return out


def bcc_version() -> str:
    """The BCC (python3-bpfcc) version whose tools ran: their BPF text and
    attach points differ between versions (e.g. biolatency: kprobes in 0.26,
    block tracepoints in later ones)."""
    try:
        import bcc
    except ImportError:
        return "not installed"
    return str(getattr(bcc, "__version__", "unknown"))


def _skipped(tool: Tool, reason: str, where: str, kernel: str) -> dict:
    rec = report.not_run(tool, "skipped", reason, where, kernel)
    rec["needs_kprobes"] = True
    return rec


def skip_reason(tool: Tool, kfunc_error: str | None = None) -> str:
    """Why ``tool`` cannot run on a kernel without kprobes."""
    tried = ""
    if kfunc_error is not None:
        tried = f"; its kfunc (fentry) mode failed here too: {kfunc_error}"
    return (f"{tool.name}: needs kprobes ({tool.kprobe_targets}){tried}; none on this "
            "kernel — run with --kernel bookworm to use the VM")


def compare_in_vm(tools: list[Tool], duration: float, runs: int, kernel: str,
                  log=sys.stderr) -> list[dict]:
    """Measure ``tools`` inside the test VM ``kernel``; records come back as JSON."""
    from pybpfmap.vm import run_in_vm

    where = f"vm:{kernel}"
    cmd = ["python3", "-m", "pybpfmap", "bcc-compare", "--in-guest", where,
           "--tools", *[t.name for t in tools], "--duration", str(duration),
           "--runs", str(runs)]
    # Per run: three measurements and two tool start-ups (slow under TCG).
    per_tool = runs * (3 * duration + 2 * VM_START_TIMEOUT / 4) + 60
    with tempfile.TemporaryDirectory(prefix="pybpfmap-bcc-vm-") as results:
        r = run_in_vm(cmd, kernel=kernel, timeout=300 + per_tool * len(tools),
                      results_dir=Path(results), stream=log)
        path = Path(results) / RESULTS_FILE
        if path.is_file():
            recs = json.loads(path.read_text())
            for rec in recs:
                rec["vm"] = {"outcome": r.outcome, "accel": r.accel,
                             "splats": [s.to_dict() for s in r.splats]}
            return recs
    reason = f"VM run {r.outcome}: {r.message}"
    return [report.not_run(t, "failed", reason, where, r.kernel_release or "?")
            for t in tools]


def compare(tools: list[str] | None = None, duration: float = 2.0, runs: int = 3,
            kernel: str | None = None, log=sys.stderr) -> list[dict]:
    """Compare BCC tools with preallocated vs BPF_F_NO_PREALLOC hash maps.

    ``tools``: names from :data:`pybpfmap.bcc_compare.tools.TOOLS` (default: all);
    ``kernel``: a VM suite (e.g. "bookworm") for the tools that need kprobes
    when this kernel has none.  Returns one record per tool and map mode
    (``status="ok"``) or per tool not measured (``"skipped"``/``"failed"``).
    """
    _check(duration, runs)
    selected = select(tools)
    recs = compare_here(selected, duration, runs, "host", log)
    if kernel is not None:
        to_vm = [r["tool"] for r in recs if r.get("needs_kprobes")]
        if to_vm:
            recs = [r for r in recs if r["tool"] not in to_vm]
            recs += compare_in_vm([t for t in selected if t.name in to_vm], duration, runs,
                                  kernel, log)
    order = {t.name: i for i, t in enumerate(selected)}
    return sorted(recs, key=lambda r: order[r["tool"]])


def write_results(recs: list[dict]) -> Path | None:
    """In the guest: write records to $PYBPFMAP_RESULTS/bcc-compare.json."""
    d = os.environ.get("PYBPFMAP_RESULTS")
    if not d:
        return None
    path = Path(d) / RESULTS_FILE
    path.write_text(json.dumps(recs, indent=1))
    return path
