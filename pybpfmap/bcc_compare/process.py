"""One tool started under :mod:`.launcher`: its pipes, its control channel, its end.

The tool runs in a process group of its own (:class:`pybpfmap.procs.Child`),
killed on the way out whatever happens (Ctrl-C included), and also when
pybpfmap dies first, even by SIGKILL (see :mod:`pybpfmap.procs`): no probe or
map outlives a run.  Two pipes carry the launcher's JSON lines: commands in
(``park``, ``resume``), events (the BPF text it saw) and replies out.  Reader
threads bring in stdout, stderr (:mod:`.capture`) and the events; waiting is
woken by what they bring, and a failure is typed by what the tool said
(:func:`pybpfmap.bcc_compare.failures.tool_failure`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from pybpfmap.bcc_compare import verify
from pybpfmap.bcc_compare.capture import Stream, error_summary
from pybpfmap.bcc_compare.deadline import start_deadline
from pybpfmap.bcc_compare.failures import ToolFailed, tool_failure
from pybpfmap.bcc_compare.tools import Tool
from pybpfmap.procs import Child, wait_until

STOP_TIMEOUT = 20.0


def launcher_cmd(tool: Tool, mode: str, control: tuple[int, int] | None = None) -> list[str]:
    """The command line of ``tool`` under :mod:`.launcher` in ``mode``;
    ``control``: the child's ends of the command and event pipes."""
    ctl = ["--control", f"{control[0]},{control[1]}"] if control else []
    return [sys.executable, "-m", "pybpfmap.bcc_compare.launcher", "--mode", mode, *ctl,
            tool.path, *tool.args]


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
        self.out, self.err = Stream(tool, self._notify), Stream(None, self._notify)
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

    @property
    def label(self) -> str:
        """``runqlat (noprealloc)``: how errors and progress name this process."""
        return f"{self.tool.name} ({self.mode})"

    def failure(self, what: str) -> ToolFailed:
        """The tool's failure (``what`` happened), typed by what its stderr says."""
        text = self.err.text()
        return tool_failure(self.label, f"{self.label} {what}: {error_summary(text)}", text)

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
            raise tool_failure(self.label, f"{self.label}: {cmd} failed: {reply.get('error')}")
        return reply

    def park(self, timeout: float) -> int:
        """Detach the tool's probes (programs and maps stay); how many were open."""
        reply = self.command("park", timeout)
        if reply["open"]:
            raise ToolFailed(self.label, f"{self.label}: {reply['open']} attachments still "
                             "open after park")
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
