"""Measure one BCC tool: without it, as shipped, and with NO_PREALLOC maps, interleaved.

How the windows are arranged, and why
-------------------------------------
A *window* is ``duration`` seconds of the tool's workload (:mod:`pybpfmap.workloads`,
served by one long-lived process).  For each of ``runs`` rounds there is one
window without any tool (baseline), one with the tool as shipped
(preallocated ``BPF_HASH``) and one with its hash maps rewritten to
``BPF_F_NO_PREALLOC``, in the order B S N, then B N S, B S N... (ABAB, so
that a drift over time does not favour either mode).  Each round gives a
paired difference of the two modes' cost per event.

Both tool processes stay loaded for the whole measurement.  BCC compiles a
tool with clang when it starts: about a second on the host, a minute or
more under TCG, where reloading the tool for every window (2 × runs
compiles) would cost most of the time budget.  Keeping both attached at once
is wrong: both would fire on the same events.  So each tool is started once
under :mod:`.launcher`, which records the tool's attach calls; the harness
*parks* it (BCC's own detach calls, as in ``BPF.cleanup()``, with programs
and maps left loaded) and *resumes* it (the recorded attach calls replayed;
BCC reuses the loaded programs) around its windows.  Only one tool is ever
attached during a window, and none during a baseline.  That is checked on the
kernel before the windows: with BPF_ENABLE_STATS on, a short workload with
both parked must not run any of their programs, and with one resumed only
its programs may run (:func:`check_isolation`).  Cost: two compiles per
tool, started one after the other (shipped first, so that a tool that cannot
attach, or whose text has nothing to rewrite, costs at most one; under the
single-threaded TCG that runs the test VM a parallel start would not be
faster anyway).

A tool whose BPF text the rewrite does not change (opensnoop's kfunc path
declares no ``BPF_HASH``) is not comparable: the launcher says so before
BCC compiles anything, and the run stops there (:class:`NotComparable`).

Start-up deadline
-----------------
A tool is ready when it prints its first line: every tool here prints its
header ("Tracing ...", or the column titles) after attaching.  How long that
may take depends on the machine, so the deadline is not a constant: it is
:data:`START_FACTOR` times the time this machine takes to compile and load a
trivial program with BCC (:func:`compile_calibration`, measured once per
process, at least :data:`MIN_START` s).  A trivial compile pays the same
Python start, bcc import, clang start-up and BCC's own headers as a tool, and
scales with the machine the same way: measured here, the tools take 2 to 10
times as long as the trivial program (host: runqlat 1.9 s against 0.25 s;
bookworm VM under TCG: tcpconnect 23 s against 2.5 s), so the factor leaves
a margin of 6 for a machine that is also busy with something else.  A tool
that exits early fails at once with its own error; one that hangs fails at
the deadline.

Each tool runs in a process group of its own (:class:`pybpfmap.procs.Child`),
killed on the way out whatever happens (Ctrl-C included), and also when
pybpfmap dies first, even by SIGKILL (see :mod:`pybpfmap.procs`): no probe or
map outlives a run.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from pybpfmap import bpfsys
from pybpfmap.bcc_compare import verify
from pybpfmap.bcc_compare.tools import Tool, output_evidence
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.procs import Child, tell_ready, wait_until

MODES = ("shipped", "noprealloc")
SLOTS = ("baseline", *MODES)
START_FACTOR = 60.0
MIN_START = 30.0
STOP_TIMEOUT = 20.0
KEEP_LINES = 40
ISOLATION_WINDOW = 0.3   # seconds of workload per isolation check step

TINY_PROGRAM = ("import bcc; b = bcc.BPF(text=b'int f(void *ctx) { return 0; }'); "
                "b.load_func(b'f', bcc.BPF.SOCKET_FILTER)")


class ToolFailed(Exception):
    """The tool did not start, did not attach, or did not print what it normally
    prints; ``stderr`` is what it said (head and tail)."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


class NotComparable(Exception):
    """The rewrite does not change the tool's BPF text: both modes are one program."""

    def __init__(self, tool: Tool, info: dict):
        self.tool, self.info = tool, info
        kinds = ", ".join(info.get("kinds") or []) or "no automatic probes"
        super().__init__(f"no hash map to rewrite: the BPF text {tool.name} builds here "
                         f"({kinds}) declares no BPF_HASH, so both modes would load the "
                         "same program")


# --- start-up deadline ---------------------------------------------------------


@functools.cache
def compile_calibration() -> float:
    """Seconds this machine takes to start Python, import bcc, compile and load a
    trivial program (measured once per process)."""
    start = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", TINY_PROGRAM], capture_output=True,
                             text=True, timeout=1800)
    except subprocess.TimeoutExpired as e:
        raise EnvironmentProblem("bcc", "compiling a trivial BPF program did not finish in "
                                 "30 minutes") from e
    if out.returncode != 0:
        raise EnvironmentProblem("bcc", "cannot compile a trivial BPF program: "
                                 f"{error_summary(out.stderr)}")
    return time.monotonic() - start


def start_deadline() -> float:
    """Seconds a tool may take to print its first line on this machine."""
    return max(MIN_START, START_FACTOR * compile_calibration())


# --- the tool's output ---------------------------------------------------------


@dataclass
class _Stream:
    """What a reader thread saw on one pipe: a head, a tail and a line count.
    ``first_line`` is set by a line, not by EOF; ``notify`` is called after
    every line and at EOF."""

    pattern: Tool | None
    notify: Callable[[], None] = lambda: None
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
            self.notify()
        self.notify()

    def text(self) -> str:
        skipped = self.lines - len(self.head) - len(self.tail)
        gap = [f"[... {skipped} lines ...]"] if skipped > 0 else []
        return "\n".join(self.head + gap + self.tail)


_ERROR_LINE = re.compile(r"^(bpf: |libbpf: |[\w.]*(Error|Exception)\b|Failed|cannot|Cannot)")


def error_summary(stderr: str) -> str:
    """The lines of a tool's stderr that say what went wrong (not the traceback)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    picked = [line for line in lines if _ERROR_LINE.match(line)]
    return " | ".join(list(dict.fromkeys(picked or lines[-2:]))[-3:]) or "no error output"


def launcher_cmd(tool: Tool, mode: str, control: tuple[int, int] | None = None) -> list[str]:
    ctl = ["--control", f"{control[0]},{control[1]}"] if control else []
    return [sys.executable, "-m", "pybpfmap.bcc_compare.launcher", "--mode", mode, *ctl,
            tool.path, *tool.args]


# --- one tool process ----------------------------------------------------------


class ToolProcess:
    """A tool started under :mod:`.launcher`, with its control channel.
    ``proc`` is its :class:`pybpfmap.procs.Child`."""

    def __init__(self, tool: Tool, mode: str):
        self.tool, self.mode = tool, mode
        cmd_r, self._cmd_w = os.pipe()
        self._ev_r, ev_w = os.pipe()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.started = time.monotonic()
        try:
            self.proc = Child(launcher_cmd(tool, mode, (cmd_r, ev_w)),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, pass_fds=(cmd_r, ev_w))
        except BaseException:
            os.close(self._cmd_w)
            os.close(self._ev_r)
            raise
        finally:
            os.close(cmd_r)
            os.close(ev_w)
        # What the reader threads bring in; every change bumps _version and
        # notifies _changed, which _wait() waits on between its looks.
        self._changed = threading.Condition()
        self._version = self._seen = 0
        self.out, self.err = _Stream(tool, self._notify), _Stream(None, self._notify)
        self.events: list[dict] = []
        self._replies: deque[dict] = deque()
        self._threads = [threading.Thread(target=s.feed, args=(p,), daemon=True)
                         for s, p in ((self.out, self.proc.popen.stdout),
                                      (self.err, self.proc.popen.stderr))]
        self._threads.append(threading.Thread(target=self._read_events, daemon=True))
        for t in self._threads:
            t.start()
        self.ready_s: float | None = None

    def _notify(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def _pause(self, seconds: float) -> None:
        """Between two looks of :meth:`_wait`: until something comes in (not
        at all if something did since the last look), or ``seconds``."""
        with self._changed:
            if self._version == self._seen:
                self._changed.wait(seconds)

    def _read_events(self) -> None:
        with os.fdopen(self._ev_r, "r") as f:
            for line in f:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self._changed:
                    (self._replies if "reply" in msg else self.events).append(msg)
                self._notify()
        self._notify()

    def failure(self, what: str) -> ToolFailed:
        text = self.err.text()
        return ToolFailed(f"{self.tool.name} ({self.mode}) {what}: {error_summary(text)}",
                          text)

    def _wait(self, done: Callable[[], Any], timeout: float, what: str,
              late: str | None = None) -> Any:
        """Wait until ``done()`` is true (woken by what the reader threads bring
        in; the tool's exit is looked at every 0.2 s); ToolFailed if the tool
        exits first ("exited with status N ``what``") or ``timeout`` passes
        (``late``, by default the start-up deadline's message)."""
        def look() -> Any:
            with self._changed:
                self._seen = self._version
            result = done()
            if result or self.proc.poll() is None:
                return result
            for t in self._threads:  # its last lines and events
                t.join(STOP_TIMEOUT)
            result = done()
            if not result:
                raise self.failure(f"exited with status {self.proc.returncode} {what}")
            return result

        result = wait_until(look, timeout, 0.2, self._pause)
        if not result:
            raise self.failure(late or f"did not get {what} within {timeout:.0f} s (this "
                               "machine's start-up deadline)")
        return result

    def text_info(self, deadline: float) -> dict:
        """The launcher's description of the first non-empty BPF text the tool
        builds (sent before BCC compiles it)."""
        def first() -> dict | None:
            return next((e for e in self.events if e["event"] == "bpf" and not e["empty"]),
                        None)
        return self._wait(first, deadline, "before building its BPF program")

    def wait_ready(self, deadline: float) -> float:
        """Wait for the tool's first line of output, printed after attaching;
        return the seconds since start.  A tool that dies after that line is
        caught by the next command (``park``)."""
        self._wait(self.out.first_line.is_set, deadline, "before tracing",
                   f"printed nothing within {deadline:.0f} s (this machine's start-up "
                   "deadline)")
        self.ready_s = time.monotonic() - self.started
        return self.ready_s

    def command(self, cmd: str, timeout: float) -> dict:
        """Send ``cmd`` to the launcher; its reply (ToolFailed if it failed)."""
        try:
            os.write(self._cmd_w, (cmd + "\n").encode())
        except BrokenPipeError:  # it is exiting: the pipe's EOF comes before its status
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
            for t in self._threads:  # its last lines
                t.join(STOP_TIMEOUT)
            raise self.failure(f"exited with status {self.proc.returncode} before "
                               f"{cmd!r}") from None

        def take() -> dict | None:
            with self._changed:
                return self._replies.popleft() if self._replies else None

        reply = self._wait(take, timeout, f"during {cmd!r}",
                           f"did not answer {cmd!r} in {timeout:.0f} s")
        if not reply.get("ok"):
            raise ToolFailed(f"{self.tool.name} ({self.mode}): {cmd} failed: "
                             f"{reply.get('error')}")
        return reply

    def park(self, timeout: float) -> int:
        """Detach the tool's probes (programs and maps stay); how many were open."""
        reply = self.command("park", timeout)
        if reply["open"]:
            raise ToolFailed(f"{self.tool.name} ({self.mode}): {reply['open']} attachments "
                             "still open after park")
        return reply["detached"]

    def resume(self, timeout: float) -> int:
        """Re-attach the tool's probes; how many are open."""
        return self.command("resume", timeout)["open"]

    def hash_names(self) -> list[str]:
        """The BPF_HASH names the launcher found in the tool's BPF text."""
        names: list[str] = []
        for e in self.events:
            if e["event"] == "bpf":
                names += e["bpf_hash"]
        return list(dict.fromkeys(names))

    def maps(self) -> dict:
        """The kernel's record of the tool's start/end maps (see verify.tool_maps)."""
        return verify.tool_maps(self.proc.pid, self.hash_names())

    def stop(self) -> int | None:
        """SIGINT (as Ctrl-C) the tool's group, up to STOP_TIMEOUT s for the
        tool to exit, then SIGKILL to whatever is left of the group; the tool's
        exit status."""
        status = self.proc.stop(grace=STOP_TIMEOUT)
        for t in self._threads:
            t.join(STOP_TIMEOUT)
        return status

    def close(self) -> None:
        """Kill the group (if still there) and release the pipes."""
        try:
            self.proc.close()
        finally:
            with suppress(OSError):
                os.close(self._cmd_w)
            for t in self._threads:  # the pipes reach EOF once the group is gone
                t.join(STOP_TIMEOUT)
            for p in (self.proc.popen.stdout, self.proc.popen.stderr):
                if p:
                    p.close()


@contextmanager
def tool_process(tool: Tool, mode: str) -> Iterator[ToolProcess]:
    """Start ``tool`` in ``mode``; on exit its process group is killed if still alive."""
    p = ToolProcess(tool, mode)
    try:
        yield p
    finally:
        p.close()


@contextmanager
def running_tool(tool: Tool, mode: str, start_timeout: float | None = None
                 ) -> Iterator[ToolProcess]:
    """Start ``tool`` in ``mode`` and yield it once it has attached (its first
    line of output), within ``start_timeout`` (default :func:`start_deadline`)."""
    with tool_process(tool, mode) as p:
        p.wait_ready(start_timeout or start_deadline())
        yield p


# --- the workload ----------------------------------------------------------------


class WorkloadServer:
    """One workload process for all windows of a tool (:func:`pybpfmap.workloads.serve`)."""

    def __init__(self, name: str, timeout: float):
        self.name, self.timeout = name, timeout
        cmd = [sys.executable, "-m", "pybpfmap.workloads", "--serve", name]
        self.proc = Child(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._reply(timeout, "set up")
        except BaseException:
            self.close(graceful=False)
            raise

    def _read(self) -> None:
        for line in self.proc.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _reply(self, timeout: float, what: str) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise EnvironmentProblem(f"workload {self.name}",
                                     f"did not {what} in {timeout:.0f} s") from None
        if line is None:
            self.proc.wait(STOP_TIMEOUT)
            tail = self.proc.popen.stderr.read().strip().splitlines()[-1:] or ["no output"]
            raise EnvironmentProblem(f"workload {self.name}", f"failed: {tail[0]}")
        return json.loads(line)

    def window(self, duration: float) -> tuple[int, float]:
        """One window: (operations, seconds)."""
        self.proc.popen.stdin.write(f"{duration}\n")
        self.proc.popen.stdin.flush()
        rec = self._reply(duration + self.timeout, "finish a window")
        return rec["ops"], rec["elapsed"]

    def close(self, graceful: bool = True) -> None:
        """Ask the server to quit and give it STOP_TIMEOUT s (``graceful``); then
        its group is killed, whatever is left of it."""
        popen = self.proc.popen
        with suppress(OSError, ValueError):
            if graceful:
                popen.stdin.write("quit\n")
            popen.stdin.close()
        try:
            if graceful:
                with suppress(subprocess.TimeoutExpired):
                    self.proc.wait(STOP_TIMEOUT)
            self.proc.close()
        finally:
            self._reader.join(STOP_TIMEOUT)
            popen.stdout.close()
            popen.stderr.close()

    def __enter__(self) -> WorkloadServer:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # On an error or Ctrl-C the server may be in a window: no waiting for it.
        self.close(graceful=exc_type is None)


# --- one tool's measurement ------------------------------------------------------


@dataclass
class Window:
    """One workload window: which round, what was attached, what it did."""

    round: int
    slot: str           # baseline, shipped or noprealloc
    ops: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.ops / self.elapsed


@dataclass
class ModeRun:
    """One tool process (one mode) over the whole measurement."""

    mode: str
    maps: dict = field(default_factory=dict)       # verify.tool_maps
    attachments: int = 0                           # probes the tool opened
    start_s: float = 0.0                           # until its first line
    status: int | None = None
    evidence: str | None = None
    output_lines: int = 0


@dataclass
class Measurement:
    """Everything measured for one tool."""

    tool: Tool
    duration: float
    runs: int
    start_deadline_s: float
    windows: list[Window] = field(default_factory=list)
    modes: dict[str, ModeRun] = field(default_factory=dict)
    isolation: str = ""
    # BPF programs loaded by others (not these tool processes) at baselines:
    # nonzero means the "without the tool" numbers may carry someone's probes.
    other_programs: int = 0
    elapsed_s: float = 0.0


def round_order(r: int) -> tuple[str, ...]:
    """The slots of round ``r``: B S N, B N S, B S N, ..."""
    return ("baseline", *(MODES if r % 2 == 0 else MODES[::-1]))


def _ran(before: dict[int, int], after: dict[int, int]) -> int:
    return sum(after.get(i, 0) - n for i, n in before.items())


def check_isolation(procs: dict[str, ToolProcess], server: WorkloadServer,
                    timeout: float) -> str:
    """Prove on the kernel that parking works: with run-time statistics on, a
    short workload with every tool parked runs none of their programs, and with
    one resumed only that one's.  ToolFailed otherwise; the result as a sentence."""
    with ExitStack() as stack:
        try:
            stack.enter_context(bpfsys.stats_enabled())
        except OSError as e:
            return f"not checked: BPF_ENABLE_STATS refused ({e})"

        def counts() -> dict[str, dict[int, int]]:
            return {m: verify.prog_run_counts(p.proc.pid) for m, p in procs.items()}

        before = counts()
        server.window(ISOLATION_WINDOW)
        after = counts()
        ran = {m: _ran(before[m], after[m]) for m in procs}
        if any(ran.values()):
            raise ToolFailed(f"{procs[MODES[0]].tool.name}: parked programs still ran "
                             f"({ran}): detaching does not work here")
        seen = {}
        for mode, p in procs.items():
            p.resume(timeout)
            try:
                before = counts()
                server.window(ISOLATION_WINDOW)
                after = counts()
            finally:
                p.park(timeout)
            ran = {m: _ran(before[m], after[m]) for m in procs}
            others = {m: n for m, n in ran.items() if m != mode and n}
            if others:
                raise ToolFailed(f"{p.tool.name}: while only {mode} was attached, the "
                                 f"parked programs ran too ({others})")
            if not ran[mode]:
                raise ToolFailed(f"{p.tool.name} ({mode}): its programs never ran during "
                                 f"its workload ({server.name}): nothing to measure")
            seen[mode] = ran[mode]
    runs = ", ".join(f"{m} {n}" for m, n in seen.items())
    return (f"checked on the kernel (run_cnt): parked programs ran 0 times; each mode "
            f"alone ran its own ({runs} runs in {ISOLATION_WINDOW:g} s) and not the other's")


def _other_programs(procs: dict[str, ToolProcess]) -> int:
    ours: set[int] = set()
    for p in procs.values():
        ours.update(verify.prog_ids(p.proc.pid))
    return len(bpfsys.all_ids(bpfsys.PROG_GET_NEXT_ID) - ours)


def _say(log, text: str) -> None:
    if log:
        print(f"pybpfmap bcc-compare: {text}", file=log, flush=True)


def measure_tool(tool: Tool, duration: float, runs: int, log=sys.stderr,
                 deadline: float | None = None) -> Measurement:
    """Both modes of ``tool`` loaded once, ``runs`` interleaved rounds of
    baseline/shipped/noprealloc windows.  Raises NotComparable, ToolFailed."""
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
                raise ToolFailed(f"{tool.name}: {info['error']}")
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
                    m.other_programs = max(m.other_programs, _other_programs(procs))
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
                raise ToolFailed(f"{tool.name} ({mode}): maps {sorted(left)} outlived the tool")
    m.elapsed_s = time.monotonic() - t0
    return m
