"""Workloads: bounded, counted load on kernel paths, for stress and bcc-compare alike.

A :class:`Workload` is set up once (``with``) and then asked for one *window*
at a time: about ``duration`` seconds of work, returned as a :class:`Window`
(operations, elapsed seconds, and per-kind counts).  Each runs in a process
of its own (so nobody competes with it for the GIL): ``pybpfmap stress``
forks its workloads (:mod:`pybpfmap.stress.workloads`), ``bcc-compare``
serves windows from a child process (:func:`serve`: a file, a listening
socket or a pinned echo child is made once, not per window; under TCG a
Python start alone takes seconds).  :data:`WORKLOADS` is the registry.

One operation is:

``wakeups``      a pipe round trip between two processes pinned to one CPU
                 (two wakeups, two context switches)
``getpid``       one call of libc ``getpid()`` (through ``os.getpid``)
``open``         one ``openat()`` + ``close()`` of /dev/null
``tcp_connect``  one TCP connect + accept over loopback, closed with RST
                 (SO_LINGER 0, so no TIME_WAIT pile-up)
``block_io``     one 4 KiB O_DIRECT read at a random offset of a 16 MiB file
                 on a block device (never tmpfs or 9p)
``process``      (stress) a fork/exit, an mmap/munmap with page faults, an
                 open/read/close and an append to a file two helpers append to
                 too: mm and VFS spinlocks in process context, a contended inode lock
``softirq``      (stress) a UDP datagram between two network namespaces over a
                 veth pair: queue and socket locks in the NET_RX softirq
``irq``          (stress) a self-sent signal and a pipe wakeup, with a 0.5 ms
                 interval timer firing in hard irq: ``siglock`` and ``pi_lock``
                 taken with spin_lock_irqsave / unlock_irqrestore

Run one window by hand: ``python -m pybpfmap.workloads open 1``; serve
windows: ``python -m pybpfmap.workloads --serve open`` (a duration per line
in, one JSON line out).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import random
import signal
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from pybpfmap.errors import EnvironmentProblem

CHECK_EVERY = 200  # operations between clock reads (for the sub-microsecond ones)


@dataclass
class Window:
    """What one window did: operations, seconds, and counts per kind of work."""

    ops: int
    elapsed: float
    counts: dict[str, int] = field(default_factory=dict)


def _timed(op: Callable[[], None], duration: float,
           check_every: int = CHECK_EVERY) -> Window:
    ops = 0
    start = time.perf_counter()
    deadline = start + duration
    while True:
        for _ in range(check_every):
            op()
        ops += check_every
        now = time.perf_counter()
        if now >= deadline:
            return Window(ops, now - start)


class Workload:
    """Set up once (``with``), then :meth:`window` as often as needed."""

    name: ClassVar[str] = ""
    check_every: ClassVar[int] = CHECK_EVERY

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def op(self) -> None:
        raise NotImplementedError

    def window(self, duration: float) -> Window:
        return _timed(self.op, duration, self.check_every)


class Wakeups(Workload):
    """Pipe ping-pong between this process and a child, both pinned to one CPU."""

    name = "wakeups"

    def __enter__(self) -> Wakeups:
        cpu = min(os.sched_getaffinity(0))
        to_child, self._from_parent = os.pipe()
        self._to_parent, from_child = os.pipe()
        self._pid = os.fork()
        if self._pid == 0:  # child: echo until EOF
            try:
                os.sched_setaffinity(0, {cpu})
                os.close(self._from_parent)
                os.close(self._to_parent)
                while os.read(to_child, 1):
                    os.write(from_child, b"x")
            finally:
                os._exit(0)
        os.close(to_child)
        os.close(from_child)
        self._old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
        return self

    def op(self) -> None:
        os.write(self._from_parent, b"x")
        os.read(self._to_parent, 1)

    def __exit__(self, *exc: object) -> None:
        os.close(self._from_parent)
        os.close(self._to_parent)
        os.waitpid(self._pid, 0)
        os.sched_setaffinity(0, self._old)


class Getpid(Workload):
    name = "getpid"

    def op(self) -> None:
        os.getpid()


class OpenClose(Workload):
    name = "open"

    def op(self) -> None:
        os.close(os.open("/dev/null", os.O_RDONLY))


class TcpConnect(Workload):
    """connect()/accept() pairs to a listener on 127.0.0.1, closed with RST."""

    name = "tcp_connect"
    check_every = 10  # tens of microseconds each, milliseconds under TCG

    def __enter__(self) -> TcpConnect:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._addr = self._listener.getsockname()
        self._linger = struct.pack("ii", 1, 0)
        return self

    def op(self) -> None:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, self._linger)
        c.connect(self._addr)
        s, _ = self._listener.accept()
        c.close()
        s.close()

    def __exit__(self, *exc: object) -> None:
        self._listener.close()


BLOCK_DIRS = ("/var/tmp", "/root", "/")
BLOCK_FILE_SIZE = 16 << 20
BLOCK = 4096


def _block_dir() -> str:
    """A writable directory on a real block device (major != 0: not tmpfs/9p/overlay)."""
    for d in BLOCK_DIRS:
        try:
            st = os.stat(d)
        except OSError:
            continue
        if os.major(st.st_dev) != 0 and os.access(d, os.W_OK):
            return d
    raise EnvironmentProblem("block_io workload", f"none of {', '.join(BLOCK_DIRS)} is a "
                             "writable directory on a block device")


class BlockIo(Workload):
    """Random 4 KiB O_DIRECT reads of a 16 MiB file: each a real block I/O
    (the page cache is bypassed)."""

    name = "block_io"
    check_every = 10

    def __enter__(self) -> BlockIo:
        fd_w, self._path = tempfile.mkstemp(prefix="pybpfmap-bio-", dir=_block_dir())
        try:
            chunk = os.urandom(1 << 20)
            for _ in range(BLOCK_FILE_SIZE // len(chunk)):
                os.write(fd_w, chunk)
            os.fsync(fd_w)
        finally:
            os.close(fd_w)
        self._fd = os.open(self._path, os.O_RDONLY | os.O_DIRECT)
        self._buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        self._blocks = BLOCK_FILE_SIZE // BLOCK
        self._rnd = random.Random(0)
        return self

    def op(self) -> None:
        os.preadv(self._fd, [self._buf], self._rnd.randrange(self._blocks) * BLOCK)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        self._buf.close()
        os.unlink(self._path)


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


WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (
    Wakeups, Getpid, OpenClose, TcpConnect, BlockIo, Process, Softirq, Irq)}


def serve(name: str, commands=sys.stdin, replies=sys.stdout) -> None:
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


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve"]:
        serve(args[1])
        return
    name, duration = args[:2]
    with WORKLOADS[name]() as w:
        got = w.window(float(duration))
    print(json.dumps({"workload": name, "ops": got.ops, "elapsed": got.elapsed,
                      "counts": got.counts}))


if __name__ == "__main__":
    main()
