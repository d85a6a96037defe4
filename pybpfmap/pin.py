"""A map pinned in a bpf filesystem, so that a BPF program BCC compiles can use
a map pybpfmap created itself (``BPF_TABLE_PINNED``): the bench and the
tracing-program fill hand their maps over this way."""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from pybpfmap import bpfsys
from pybpfmap.errors import EnvironmentProblem, KernelError

OBJ_PIN = 6


def _bpffs_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2:3] == ["bpf"]]


@contextlib.contextmanager
def bpffs() -> Iterator[Path]:
    """A bpffs directory: the first mounted one, else a private instance
    mounted on a temporary directory for the duration (and unmounted)."""
    mounts = _bpffs_mounts()
    if mounts:
        yield Path(mounts[0])
        return
    libc = ctypes.CDLL(None, use_errno=True)
    with tempfile.TemporaryDirectory(prefix="pybpfmap-bpffs-") as tmp:
        if libc.mount(b"bpf", tmp.encode(), b"bpf", 0, None) != 0:
            err = ctypes.get_errno()
            raise EnvironmentProblem("bpffs", f"no bpf filesystem mounted and mounting one "
                                     f"on {tmp} failed: {os.strerror(err)}", err)
        try:
            yield Path(tmp)
        finally:
            libc.umount2(tmp.encode(), 2)  # MNT_DETACH


class _PinAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("_pad", ctypes.c_char * 112)]


@contextlib.contextmanager
def pinned(fd: int, directory: Path) -> Iterator[str]:
    """``fd`` pinned under ``directory`` while inside; the path."""
    path = directory / f"pybpfmap-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    name = ctypes.create_string_buffer(str(path).encode())
    try:
        bpfsys.bpf(OBJ_PIN, _PinAttr(pathname=ctypes.addressof(name), bpf_fd=fd))
    except bpfsys.BpfSyscallError as e:
        raise KernelError("bpffs", e.errno, f"could not pin the map at {path}") \
            from None
    try:
        yield str(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
