"""Workloads of one syscall-level operation repeated: what the bcc tools trace.

Each :meth:`~pybpfmap.workloads.base.Workload.op` is one event for a tool
(bcc-compare measures a tool's cost per operation): a pipe round trip
(runqlat), a ``getpid()`` (funclatency), an ``open()`` (opensnoop, syscount),
a loopback TCP connection (tcpconnect, tcplife), a block I/O (biolatency).
"""

from __future__ import annotations

import mmap
import os
import random
import socket
import struct
import tempfile

from pybpfmap.errors import EnvironmentProblem
from pybpfmap.workloads.base import Workload


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
