"""Run one BCC tool under its workload: without it, as shipped, and rewritten.

A *measurement* is one workload run (:mod:`.workloads`) in its own process.
For each of ``runs`` repetitions :func:`measure_tool` takes a baseline (no
tool), then one measurement with the tool as shipped (``BPF_HASH``
preallocated) and one with its hash maps rewritten to ``BPF_F_NO_PREALLOC``
(:mod:`.launcher`); the order of the two modes alternates between runs.  While
the tool runs, the kernel is asked which flags its maps carry (:mod:`.verify`);
when it stops (SIGINT, like Ctrl-C) its output must show what the tool
normally prints.  Each tool is started in its own session and its whole
process group is killed on the way out, whatever happens, so no probe or map
outlives a run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from pybpfmap import bpfsys
from pybpfmap.bcc_compare import verify
from pybpfmap.bcc_compare.tools import Tool, output_evidence
from pybpfmap.errors import EnvironmentProblem

MODES = ("shipped", "noprealloc")
START_TIMEOUT = 90.0   # BCC compiles the tool's C with clang on start: seconds on 2 CPUs
VM_START_TIMEOUT = 600.0  # the same under emulation (TCG) is minutes
STOP_TIMEOUT = 20.0
KEEP_LINES = 40


class ToolFailed(Exception):
    """The tool did not start, or did not print what it normally prints."""


def workload(name: str, duration: float) -> tuple[int, float]:
    """Run workload ``name`` for ``duration`` s in a child process: (ops, seconds)."""
    cmd = [sys.executable, "-m", "pybpfmap.bcc_compare.workloads", name, str(duration)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    except subprocess.TimeoutExpired as e:
        raise EnvironmentProblem(f"workload {name}", "did not finish in time") from e
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
        raise EnvironmentProblem(f"workload {name}", f"failed: {tail[0]}")
    rec = json.loads(out.stdout)
    return rec["ops"], rec["elapsed"]


@dataclass
class _Stream:
    """What a reader thread saw on one pipe: a head, a tail and a line count."""

    pattern: Tool | None
    head: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    lines: int = 0
    evidence: str | None = None
    first_line: threading.Event = field(default_factory=threading.Event)

    def feed(self, pipe) -> None:
        for raw in pipe:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines += 1
            if len(self.head) < KEEP_LINES:
                self.head.append(line)
            else:
                self.tail = (self.tail + [line])[-KEEP_LINES:]
            if self.pattern is not None and self.evidence is None:
                self.evidence = output_evidence(self.pattern, line)
            self.first_line.set()
        self.first_line.set()

    def text(self) -> str:
        skipped = self.lines - len(self.head) - len(self.tail)
        gap = [f"[... {skipped} lines ...]"] if skipped > 0 else []
        return "\n".join(self.head + gap + self.tail)


@dataclass
class RunningTool:
    """A tool started by :func:`running_tool`."""

    tool: Tool
    mode: str
    proc: subprocess.Popen
    out: _Stream
    err: _Stream
    report: str
    threads: list[threading.Thread]

    def hash_names(self) -> list[str]:
        """The BPF_HASH names the launcher found in the tool's BPF text."""
        names: list[str] = []
        with open(self.report) as f:
            for line in f:
                names += json.loads(line)["bpf_hash"]
        return list(dict.fromkeys(names))

    def maps(self) -> dict:
        """The kernel's record of the tool's start/end maps (see verify.tool_maps)."""
        return verify.tool_maps(self.proc.pid, self.hash_names())

    def stop(self) -> int | None:
        """SIGINT (as Ctrl-C) the tool's group, wait; SIGKILL if it lingers."""
        _signal_group(self.proc, signal.SIGINT)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
        _signal_group(self.proc, signal.SIGKILL)  # anything it left in its group
        for t in self.threads:
            t.join(STOP_TIMEOUT)
        return self.proc.returncode

    def failure(self, what: str) -> ToolFailed:
        return ToolFailed(f"{self.tool.name} ({self.mode}) {what}: "
                          f"{error_summary(self.err.text())}")


_ERROR_LINE = re.compile(r"^(bpf: |libbpf: |[\w.]*(Error|Exception)\b|Failed|cannot|Cannot)")


def error_summary(stderr: str) -> str:
    """The lines of a tool's stderr that say what went wrong (not the traceback)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    picked = [line for line in lines if _ERROR_LINE.match(line)]
    return " | ".join(list(dict.fromkeys(picked or lines[-2:]))[-3:]) or "no error output"


def _die_with_parent() -> None:
    """In the tool's child: SIGKILL it if pybpfmap dies first (even by SIGKILL,
    when no ``finally`` runs), so a tool never outlives its run.  Also give it
    the default SIGINT disposition: a background job (nohup, CI runners)
    inherits SIGINT ignored, and then the tool would never print its summary
    when we stop it with SIGINT."""
    import ctypes

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def launcher_cmd(tool: Tool, mode: str, report: str) -> list[str]:
    return [sys.executable, "-m", "pybpfmap.bcc_compare.launcher", "--mode", mode,
            "--report", report, tool.path, *tool.args]


@contextmanager
def running_tool(tool: Tool, mode: str, start_timeout: float = START_TIMEOUT
                 ) -> Iterator[RunningTool]:
    """Start ``tool`` in ``mode``; yield once it has attached (its first line
    of output, which every tool here prints after attaching).  On exit the
    process group is killed if still alive."""
    fd, report = tempfile.mkstemp(prefix=f"pybpfmap-{tool.name}-", suffix=".jsonl")
    os.close(fd)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(launcher_cmd(tool, mode, report), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent)
    out, err = _Stream(tool), _Stream(None)
    threads = [threading.Thread(target=s.feed, args=(p,), daemon=True)
               for s, p in ((out, proc.stdout), (err, proc.stderr))]
    for t in threads:
        t.start()
    running = RunningTool(tool, mode, proc, out, err, report, threads)
    try:
        deadline = time.monotonic() + start_timeout
        while not out.first_line.wait(0.2):
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise running.failure(f"printed nothing in {start_timeout:.0f} s")
        time.sleep(0.2)
        if proc.poll() is not None:
            for t in threads:
                t.join(STOP_TIMEOUT)
            raise running.failure(f"exited with status {proc.returncode} before tracing")
        yield running
    finally:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        _signal_group(proc, signal.SIGKILL)
        for t in threads:  # the pipes reach EOF once the group is gone
            t.join(STOP_TIMEOUT)
        for p in (proc.stdout, proc.stderr):
            if p:
                p.close()
        os.unlink(report)


@dataclass
class ToolRun:
    """One measurement with the tool loaded."""

    mode: str
    ops: int
    elapsed: float
    maps: dict
    evidence: str | None
    output_lines: int


def with_tool(tool: Tool, mode: str, duration: float,
              start_timeout: float = START_TIMEOUT) -> ToolRun:
    """One workload run with ``tool`` loaded in ``mode``; raises ToolFailed."""
    with running_tool(tool, mode, start_timeout) as t:
        maps = t.maps()
        ops, elapsed = workload(tool.workload, duration)
        status = t.stop()
        if t.out.evidence is None:
            raise t.failure(f"stopped (status {status}) without its normal output "
                            f"(/{tool.output}/ in {t.out.lines} lines)")
        return ToolRun(mode, ops, elapsed, maps, t.out.evidence, t.out.lines)


@dataclass
class Measurement:
    """All runs of one tool: baselines and both modes, pairwise by run."""

    tool: Tool
    duration: float
    baseline: list[tuple[int, float]] = field(default_factory=list)
    # BPF programs loaded by anyone when each baseline started: nonzero means
    # the "without the tool" numbers may already carry someone's probes.
    progs_at_baseline: list[int] = field(default_factory=list)
    runs: dict[str, list[ToolRun]] = field(default_factory=lambda: {m: [] for m in MODES})


def measure_tool(tool: Tool, duration: float, runs: int, log=sys.stderr,
                 start_timeout: float = START_TIMEOUT) -> Measurement:
    """``runs`` × (baseline, shipped, noprealloc) for ``tool``; raises ToolFailed."""
    m = Measurement(tool, duration)
    for r in range(runs):
        m.progs_at_baseline.append(len(bpfsys.all_ids(bpfsys.PROG_GET_NEXT_ID)))
        m.baseline.append(workload(tool.workload, duration))
        order = MODES if r % 2 == 0 else MODES[::-1]
        for mode in order:
            if log:
                print(f"pybpfmap bcc-compare: {tool.name}: run {r + 1}/{runs}: starting the "
                      f"tool ({mode})", file=log, flush=True)
            run = with_tool(tool, mode, duration, start_timeout)
            m.runs[mode].append(run)
        if log:
            print(f"pybpfmap bcc-compare: {tool.name}: run {r + 1}/{runs} done", file=log)
    return m
