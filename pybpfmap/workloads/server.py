"""Windows of a workload served by a child process, and the client that asks for them.

The server (:func:`serve`) sets its workload up once, says ``{"ready": true}``,
then runs one window per line it reads (a duration in seconds) and answers
``{"ops": N, "elapsed": S}``, until EOF or ``quit``.  The client
(:class:`WorkloadServer`) starts it as a :class:`pybpfmap.procs.Child`, so it
dies with pybpfmap and its whole group is killed on the way out.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from contextlib import suppress
from typing import TextIO

from pybpfmap.errors import EnvironmentProblem
from pybpfmap.procs import Child
from pybpfmap.workloads import WORKLOADS

STOP_TIMEOUT = 20.0  # for the server to quit when asked, before its group is killed


def serve(name: str, commands: TextIO = sys.stdin, replies: TextIO = sys.stdout) -> None:
    """Set ``name`` up once, print ``{"ready": true}``, then for each line
    read (a duration in seconds) run one window and print its
    ``{"ops": N, "elapsed": S}``; stop at EOF or ``quit``."""
    with WORKLOADS[name]() as w:
        print(json.dumps({"ready": True}), file=replies, flush=True)
        for line in commands:
            line = line.strip()
            if line == "quit":
                break
            got = w.window(float(line))
            print(json.dumps({"ops": got.ops, "elapsed": got.elapsed}), file=replies,
                  flush=True)


class WorkloadServer:
    """The client: one server process (:func:`serve`) for all the windows of
    workload ``name``; ``timeout`` is how long it may take to set up, and how
    much longer than its duration a window may take."""

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
