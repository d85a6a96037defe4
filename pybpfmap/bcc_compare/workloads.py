"""Workloads that make a BCC tool's probes fire, each bounded in time.

Each workload runs for about ``duration`` seconds in its own process (so the
parent's threads reading the tool's output do not compete with it for the
GIL) and returns ``(operations, elapsed_seconds)``.  One operation is:

``wakeups``      a pipe round trip between two processes pinned to one CPU
                 (two wakeups, two context switches)
``getpid``       one call of libc ``getpid()`` (through ``os.getpid``)
``open``         one ``openat()`` + ``close()`` of /dev/null
``tcp_connect``  one TCP connect + accept over loopback, closed with RST
                 (SO_LINGER 0, so no TIME_WAIT pile-up)
``block_io``     one 4 KiB O_DIRECT read at a random offset of a 16 MiB file
                 on a block device (never tmpfs or 9p)

Run one by hand: ``python -m pybpfmap.bcc_compare.workloads open 1``.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable

from pybpfmap.errors import EnvironmentProblem

CHECK_EVERY = 200  # operations between clock reads


def _timed(op: Callable[[], None], duration: float) -> tuple[int, float]:
    ops = 0
    start = time.perf_counter()
    deadline = start + duration
    while True:
        for _ in range(CHECK_EVERY):
            op()
        ops += CHECK_EVERY
        now = time.perf_counter()
        if now >= deadline:
            return ops, now - start


def wakeups(duration: float) -> tuple[int, float]:
    """Pipe ping-pong between this process and a child on the same CPU."""
    cpu = min(os.sched_getaffinity(0))
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: echo until EOF
        try:
            os.sched_setaffinity(0, {cpu})
            os.close(from_parent)
            os.close(to_parent)
            while os.read(to_child, 1):
                os.write(from_child, b"x")
        finally:
            os._exit(0)
    os.close(to_child)
    os.close(from_child)
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        def op() -> None:
            os.write(from_parent, b"x")
            os.read(to_parent, 1)
        return _timed(op, duration)
    finally:
        os.close(from_parent)
        os.close(to_parent)
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, old)


def getpid(duration: float) -> tuple[int, float]:
    return _timed(os.getpid, duration)


def open_close(duration: float) -> tuple[int, float]:
    def op() -> None:
        os.close(os.open("/dev/null", os.O_RDONLY))
    return _timed(op, duration)


def tcp_connect(duration: float) -> tuple[int, float]:
    """connect()/accept() pairs to a listener on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        addr = listener.getsockname()
        linger = struct.pack("ii", 1, 0)

        def op() -> None:
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            c.connect(addr)
            s, _ = listener.accept()
            c.close()
            s.close()
        return _timed(op, duration)


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


def block_io(duration: float) -> tuple[int, float]:
    """Random 4 KiB O_DIRECT reads, each a real block I/O (the page cache is bypassed)."""
    fd_w, path = tempfile.mkstemp(prefix="pybpfmap-bio-", dir=_block_dir())
    try:
        chunk = os.urandom(1 << 20)
        for _ in range(BLOCK_FILE_SIZE // len(chunk)):
            os.write(fd_w, chunk)
        os.fsync(fd_w)
        os.close(fd_w)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        blocks = BLOCK_FILE_SIZE // BLOCK
        rnd = random.Random(0)
        try:
            def op() -> None:
                os.preadv(fd, [buf], rnd.randrange(blocks) * BLOCK)
            return _timed(op, duration)
        finally:
            os.close(fd)
            buf.close()
    finally:
        os.unlink(path)


WORKLOADS: dict[str, Callable[[float], tuple[int, float]]] = {
    "wakeups": wakeups,
    "getpid": getpid,
    "open": open_close,
    "tcp_connect": tcp_connect,
    "block_io": block_io,
}


def main(argv: list[str] | None = None) -> None:
    name, duration = (argv or sys.argv[1:])[:2]
    ops, elapsed = WORKLOADS[name](float(duration))
    print(json.dumps({"workload": name, "ops": ops, "elapsed": elapsed}))


if __name__ == "__main__":
    main()
