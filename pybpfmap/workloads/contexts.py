"""Workloads that take kernel locks in each context, for ``pybpfmap stress``:
process context, the NET_RX softirq and hard irq.  Each window counts per
kind of work (:attr:`~pybpfmap.workloads.base.Window.counts`)."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable

from pybpfmap.errors import EnvironmentProblem
from pybpfmap.workloads.base import Window, Workload


class Process(Workload):
    """fork/exit, mmap/munmap with page faults, open/read/close, and appends to
    a file that two helper processes append to as well, so that the inode lock
    (i_rwsem) is contended (lock:contention_begin fires for sleeping locks too)."""

    name = "process"

    def __enter__(self) -> Process:
        self._path = f"/dev/shm/pybpfmap-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(self._path, "wb"):
            pass
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        self._stop_r, self._stop_w = os.pipe()
        self._helpers = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                _append_until_eof(self._path, self._stop_r, self._stop_w)
            self._helpers.append(pid)
        os.close(self._stop_r)
        return self

    def window(self, duration: float) -> Window:
        counts = {"forks": 0, "mmaps": 0, "file_reads": 0, "appends": 0}
        page, block = mmap.PAGESIZE, b"p" * 4096
        start = time.perf_counter()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            counts["forks"] += 1
            m = mmap.mmap(-1, 16 * page)
            for off in range(0, 16 * page, page):
                m[off] = 1
            m.close()
            counts["mmaps"] += 1
            with open("/proc/self/stat", "rb") as f:
                f.read()
            counts["file_reads"] += 1
            os.write(self._fd, block)
            counts["appends"] += 1
        return Window(sum(counts.values()), time.perf_counter() - start, counts)

    def __exit__(self, *exc: object) -> None:
        os.close(self._stop_w)  # the helpers see EOF and exit
        for pid in self._helpers:
            os.waitpid(pid, 0)
        os.close(self._fd)
        os.unlink(self._path)


def _append_until_eof(path: str, stop_r: int, stop_w: int) -> None:
    """A helper of :class:`Process`: append 4 KiB blocks until the pipe closes."""
    os.close(stop_w)
    os.set_blocking(stop_r, False)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    block = b"a" * 4096
    n = 0
    while True:
        os.write(fd, block)
        n += 1
        if n % 256 == 0:
            os.ftruncate(fd, 0)
            try:
                if os.read(stop_r, 1) == b"":
                    break
            except BlockingIOError:
                pass
    os._exit(0)


PORT = 39_999


class Softirq(Workload):
    """UDP from network namespace A to B over a veth pair (``pair``, a
    :class:`pybpfmap.stress.workloads.VethPair`): veth transmit queues to the
    backlog and the NET_RX softirq delivers."""

    name = "softirq"

    def __init__(self, pair: object = None):
        if pair is None:
            raise EnvironmentProblem("softirq", "needs a veth pair (stress.workloads.veth_pair())")
        self.pair = pair

    def __enter__(self) -> Softirq:
        from pyroute2 import netns

        netns.setns(self.pair.ns_b, flags=0)
        self._rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._rx.bind((self.pair.addr_b, PORT))
        self._rx.setblocking(False)
        netns.setns(self.pair.ns_a, flags=0)
        self._tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return self

    def window(self, duration: float) -> Window:
        payload = b"x" * 64
        sent = received = 0
        start = time.perf_counter()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            for _ in range(32):
                try:
                    self._tx.sendto(payload, (self.pair.addr_b, PORT))
                    sent += 1
                except OSError as e:
                    if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        raise
            while True:
                try:
                    self._rx.recv(2048)
                    received += 1
                except BlockingIOError:
                    break
        return Window(received, time.perf_counter() - start,
                      {"packets_sent": sent, "packets_received": received})

    def __exit__(self, *exc: object) -> None:
        self._tx.close()
        self._rx.close()


class Irq(Workload):
    """A 0.5 ms interval timer, self-sent signals and pipe wakeups."""

    name = "irq"

    def __enter__(self) -> Irq:
        self.counts = {"timer_ticks": 0, "signals": 0, "wakeups": 0}

        def count(key: str) -> Callable:
            def handler(signum, frame) -> None:
                self.counts[key] += 1
            return handler

        signal.signal(signal.SIGALRM, count("timer_ticks"))
        signal.signal(signal.SIGUSR1, count("signals"))
        ping_r, self._ping_w = os.pipe()
        self._pong_r, pong_w = os.pipe()
        self._pid = os.fork()
        if self._pid == 0:
            os.close(self._ping_w)
            os.close(self._pong_r)
            while os.read(ping_r, 1):
                os.write(pong_w, b"p")
            os._exit(0)
        os.close(ping_r)
        os.close(pong_w)
        return self

    def window(self, duration: float) -> Window:
        for key in self.counts:
            self.counts[key] = 0
        start = time.perf_counter()
        deadline = time.monotonic() + duration
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        try:
            while time.monotonic() < deadline:
                os.kill(os.getpid(), signal.SIGUSR1)
                os.write(self._ping_w, b"p")
                os.read(self._pong_r, 1)
                self.counts["wakeups"] += 2
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
        return Window(sum(self.counts.values()), time.perf_counter() - start,
                      dict(self.counts))

    def __exit__(self, *exc: object) -> None:
        os.close(self._ping_w)
        os.waitpid(self._pid, 0)
        os.close(self._pong_r)
