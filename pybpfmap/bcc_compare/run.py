"""Measure one BCC tool: without it, as shipped, and with NO_PREALLOC maps, interleaved.

How the windows are arranged, and why
-------------------------------------
A *window* is ``duration`` seconds of the tool's workload (:mod:`pybpfmap.workloads`,
served by one long-lived process: :class:`pybpfmap.workloads.server.WorkloadServer`).
Each of ``runs`` rounds has a baseline window, one with the tool as shipped
and one with its hash maps rewritten, in ABAB order (:mod:`.measurement`).

Both tool processes stay loaded for the whole measurement.  BCC compiles a
tool with clang when it starts: about a second on the host, a minute or
more under TCG, where reloading the tool for every window (2 × runs
compiles) would cost most of the time budget.  Keeping both attached at once
is wrong: both would fire on the same events.  So each tool is started once
under :mod:`.launcher`, which records the tool's attach calls; the harness
*parks* it (BCC's own detach calls, as in ``BPF.cleanup()``, with programs
and maps left loaded) and *resumes* it (the recorded attach calls replayed;
BCC reuses the loaded programs) around its windows.  Only one tool is ever
attached during a window, and none during a baseline, which is checked on
the kernel before the windows (:mod:`.isolation`).  Cost: two compiles per
tool, started one after the other (shipped first, so that a tool that cannot
attach, or whose text has nothing to rewrite, costs at most one; under the
single-threaded TCG that runs the test VM a parallel start would not be
faster anyway), each within this machine's start-up deadline (:mod:`.deadline`).

A tool whose BPF text the rewrite does not change (opensnoop's kfunc path
declares no ``BPF_HASH``) is not comparable: the launcher says so before
BCC compiles anything, and the run stops there (:class:`.failures.NotComparable`).
Each tool process is :mod:`.process`; what it says when it fails is typed by
:mod:`.failures`.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack

from pybpfmap.bcc_compare import verify
from pybpfmap.bcc_compare.deadline import start_deadline
from pybpfmap.bcc_compare.failures import NotComparable, ToolFailed
from pybpfmap.bcc_compare.isolation import check_isolation, other_programs
from pybpfmap.bcc_compare.launcher import MODES
from pybpfmap.bcc_compare.measurement import Measurement, ModeRun, Window, round_order
from pybpfmap.bcc_compare.process import ToolProcess, tool_process
from pybpfmap.bcc_compare.tools import Tool
from pybpfmap.procs import tell_ready
from pybpfmap.workloads.server import WorkloadServer


def _say(log, text: str) -> None:
    if log:
        print(f"pybpfmap bcc-compare: {text}", file=log, flush=True)


def measure_tool(tool: Tool, duration: float, runs: int, log=sys.stderr,
                 deadline: float | None = None) -> Measurement:
    """Both modes of ``tool`` loaded once, ``runs`` interleaved rounds of
    baseline/shipped/noprealloc windows.  Raises :class:`.failures.NotComparable`,
    :class:`.failures.ToolFailed` (or one of its kinds, by what BCC said), and
    :class:`pybpfmap.errors.EnvironmentProblem` for the workload."""
    deadline = deadline or start_deadline()
    m = Measurement(tool, duration, runs, deadline)
    t0 = time.monotonic()
    with ExitStack() as stack:
        server = stack.enter_context(WorkloadServer(tool.workload, deadline))
        procs: dict[str, ToolProcess] = {}
        for mode in MODES:
            _say(log, f"{tool.name}: starting the tool ({mode}; start-up deadline "
                      f"{deadline:.0f} s)")
            p = stack.enter_context(tool_process(tool, mode))
            info = p.text_info(deadline)
            if info["error"]:
                raise ToolFailed(tool.name, f"{tool.name}: {info['error']}")
            if not info["rewritable"]:
                raise NotComparable(tool, info)
            run = m.modes[mode] = ModeRun(mode, start_s=p.wait_ready(deadline))
            run.attachments = p.park(deadline)
            if not run.attachments:
                raise p.failure("printed its header but attached nothing")
            run.maps = p.maps()
            procs[mode] = p
        m.isolation = check_isolation(procs, server, deadline)
        for r in range(runs):
            _say(log, f"{tool.name}: round {r + 1}/{runs}")
            for slot in round_order(r):
                p = procs.get(slot)
                if p is None:
                    m.other_programs = max(m.other_programs, other_programs(procs))
                else:
                    p.resume(deadline)
                    tell_ready()  # a tool attached: what Ctrl-C must undo (once)
                try:
                    ops, elapsed = server.window(duration)
                finally:
                    if p is not None:
                        p.park(deadline)
                m.windows.append(Window(r, slot, ops, elapsed))
        for mode, p in procs.items():
            ids = {rec["id"] for rec in m.modes[mode].maps["maps"].values()}
            run = m.modes[mode]
            run.status = p.stop()
            run.evidence, run.output_lines = p.out.evidence, p.out.lines
            if run.evidence is None:
                raise p.failure(f"stopped (status {run.status}) without its normal output "
                                f"(/{tool.output}/ in {p.out.lines} lines)")
            left = verify.still_loaded(ids)
            if left:
                raise ToolFailed(p.label, f"{p.label}: maps {sorted(left)} outlived the tool")
    m.elapsed_s = time.monotonic() - t0
    return m
