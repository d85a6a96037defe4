"""Memory a map really costs, from the kernel's memory cgroup.

Since the memory-cgroup accounting of v5.11 (:data:`pybpfmap.commits.MEMCG`) the
kernel charges a BPF map's memory — its preallocated elements, its bucket
array, and later every element a NO_PREALLOC map allocates — to the memory
cgroup of the process that created it (``bench_htab_mem`` in the kernel's
selftests measures it the same way).  :func:`measuring` moves this process
into a fresh child cgroup for the duration of the block, so that the child's
*kernel* memory counts what the block allocates in the kernel: cgroup v2's
``memory.stat`` ``kernel`` (since v5.18; before, ``memory.current`` minus
``anon`` and ``file``), with its ``percpu`` and ``slab`` parts, or v1's
``memory.kmem.usage_in_bytes``.  User-space memory (this Python process's
own objects) is left out.  Kernels without BPF memcg accounting are told apart by probing: a map
created inside the child that moves nothing is "not charged here", and the
figures then come from ``/proc/meminfo``'s ``Slab``, ``Percpu`` and
``VmallocUsed``, marked as system-wide (anything else on the machine moves them too).
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pybpfmap.maps import MapSpec

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Sample:
    """Bytes at one moment: the cgroup's charge and its split, and /proc/meminfo."""

    current: int | None
    percpu: int | None
    slab: int | None
    meminfo_slab: int
    meminfo_percpu: int
    meminfo_vmalloc: int

    def minus(self, base: Sample) -> Usage:
        def d(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a - b

        return Usage(d(self.current, base.current), d(self.percpu, base.percpu),
                     d(self.slab, base.slab), self.meminfo_slab - base.meminfo_slab,
                     self.meminfo_percpu - base.meminfo_percpu,
                     self.meminfo_vmalloc - base.meminfo_vmalloc)


@dataclass
class Usage:
    """What changed since the baseline (bytes): the cgroup's charge (None when
    unavailable) and the system-wide /proc/meminfo deltas."""

    memcg: int | None
    memcg_percpu: int | None
    memcg_slab: int | None
    system_slab: int
    system_percpu: int
    system_vmalloc: int   # a big preallocated element area is vmalloc'd


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


@dataclass
class Cgroup:
    """A child memory cgroup (v1 or v2) that this process sits in."""

    path: Path
    version: int

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def sample(self) -> Sample:
        info = _meminfo()
        base: tuple[int | None, int | None, int | None] = (None, None, None)
        with contextlib.suppress(OSError, ValueError):
            if self.version == 2:
                stat = {k: int(v) for k, v in
                        (line.split() for line in self._read("memory.stat").splitlines())}
                kernel = stat.get("kernel")
                if kernel is None:  # before v5.18: all of it minus user memory
                    kernel = int(self._read("memory.current")) - stat.get("anon", 0) \
                        - stat.get("file", 0)
                base = (kernel, stat.get("percpu"), stat.get("slab"))
            else:
                base = (int(self._read("memory.kmem.usage_in_bytes")), None, None)
        return Sample(*base, info.get("Slab", 0), info.get("Percpu", 0),
                      info.get("VmallocUsed", 0))


def _v2_root() -> Path | None:
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if "memory" in _words(root / "cgroup.controllers"):
            return root
    return None


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _own(hierarchy: str) -> str | None:
    """This process's cgroup path in a hierarchy ("" = v2, else a v1 controller)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (hierarchy == "" and controllers == "") or hierarchy in controllers.split(","):
            return path
    return None


def unavailable_reason() -> str | None:
    """Why no memory cgroup can be made here, or None."""
    if os.geteuid() != 0:
        return "making a memory cgroup needs root"
    if _v2_root() is None and not (CGROUP_ROOT / "memory" / "cgroup.procs").exists():
        return ("no memory controller: neither cgroup v2 with 'memory' in cgroup.controllers "
                f"nor a cgroup v1 memory hierarchy under {CGROUP_ROOT}")
    return None


@contextlib.contextmanager
def measuring() -> Iterator[Cgroup | None]:
    """This process in a fresh child memory cgroup while inside; None (and
    nothing changed) when that is impossible (:func:`unavailable_reason`)."""
    if unavailable_reason():
        yield None
        return
    v2 = _v2_root()
    if v2 is not None:
        parent = v2 / (_own("") or "/").lstrip("/")
        version = 2
        # The child needs the memory controller from its parent.
        if "memory" not in _words(parent / "cgroup.subtree_control"):
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text("+memory")
    else:
        parent = CGROUP_ROOT / "memory" / (_own("memory") or "/").lstrip("/")
        version = 1
    child = parent / f"pybpfmap-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        child.mkdir()
    except OSError:
        yield None
        return
    try:
        (child / "cgroup.procs").write_text(str(os.getpid()))
        yield Cgroup(child, version)
    finally:
        with contextlib.suppress(OSError):
            (parent / "cgroup.procs").write_text(str(os.getpid()))
        with contextlib.suppress(OSError):
            child.rmdir()


PROBE_ENTRIES = 65536  # a preallocated hash of this size allocates about 4 MiB at once


@functools.cache
def charges_maps() -> bool | None:
    """Whether this kernel charges BPF map memory to the creator's memory cgroup:
    a preallocated map of about 4 MiB must move ``memory.current`` by at least
    half of that.  None when no memory cgroup can be made here."""
    with measuring() as cg:
        if cg is None:
            return None
        before = cg.sample()
        with MapSpec("hash", True, 4, 8, PROBE_ENTRIES).create():
            after = cg.sample()
    if before.current is None or after.current is None:
        return None
    return after.current - before.current >= PROBE_ENTRIES * 64 // 2
