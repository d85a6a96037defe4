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
    peak: int | None = None   # the cgroup's high-water mark (all its memory) since it was made
    charged: int | None = None  # memory.current (v2) or memory.usage_in_bytes (v1): all of it


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
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

    def _int(self, name: str) -> int | None:
        try:
            return int(self._read(name))
        except (OSError, ValueError):
            return None

    def sample(self) -> Sample:
        """The cgroup's kernel memory now, its split, and its high-water mark:
        v2 ``memory.peak`` (absent before 5.19: probed, then None), v1
        ``memory.max_usage_in_bytes``."""
        if self.version == 1:
            return Sample(self._int("memory.kmem.usage_in_bytes"), None, None,
                          self._int("memory.max_usage_in_bytes"),
                          self._int("memory.usage_in_bytes"))
        current = self._int("memory.current")
        try:
            stat = {k: int(v) for k, v in
                    (line.split() for line in self._read("memory.stat").splitlines())}
        except (OSError, ValueError):
            return Sample(None, None, None, None, current)
        kernel = stat.get("kernel")
        if kernel is None and current is not None:  # before v5.18: all minus user memory
            kernel = current - stat.get("anon", 0) - stat.get("file", 0)
        return Sample(kernel, stat.get("percpu"), stat.get("slab"),
                      self._int("memory.peak"), current)

    def set_max(self, limit: int) -> None:
        """Limit the cgroup's memory: v2 ``memory.max``, v1 ``memory.limit_in_bytes``."""
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        (self.path / name).write_text(str(limit))

    def events(self) -> dict[str, int]:
        """v2 ``memory.events`` (``max``: times the limit was hit, ``oom``, ...);
        v1 ``memory.failcnt`` as ``max``."""
        if self.version == 1:
            n = self._int("memory.failcnt")
            return {} if n is None else {"max": n}
        try:
            return {k: int(v) for k, v in
                    (line.split() for line in self._read("memory.events").splitlines())}
        except (OSError, ValueError):
            return {}


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
