"""BPF hash maps: what a map is (MapSpec), and the kernel's own view of one.

A :class:`MapSpec` describes a map (type, preallocated or not, sizes).  It
yields the BCC declaration (``-D`` defines for ``bpf/pybpfmap_map.h``) and can
create the map directly with bpf(2) (:class:`BpfMap`), which is how pybpfmap
gets the kernel's errno when a map is refused: BCC only prints strerror text.
Once created, :meth:`BpfMap.kernel_view` reads ``bpf_map_info`` and
``/proc/self/fdinfo`` so that every figure comes from the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from pybpfmap import bpfsys, memlock
from pybpfmap.commits import MAP_LOCKED, NO_RLIMIT, RQSPINLOCK
from pybpfmap.errors import ENOTSUPP, KernelError, UsageError

TYPES = tuple(bpfsys.MAP_TYPES)
PCPU_MAX_VALUE = 32768  # PCPU_MIN_UNIT_SIZE
# htab_map_alloc(): n_buckets = roundup_pow_of_two(max_entries) must satisfy
# n_buckets <= U32_MAX / sizeof(struct bucket); with 16-byte buckets the
# largest such power of two is 2^27.
MAX_BUCKETS = 1 << 27

LRU_PREALLOC_ONLY = ("LRU maps are always preallocated: the kernel refuses "
                     "BPF_F_NO_PREALLOC for them (htab_map_alloc_check)")


def alloc_label(prealloc: bool) -> str:
    """How pybpfmap names an allocation mode everywhere: prealloc, no_prealloc."""
    return "prealloc" if prealloc else "no_prealloc"


@dataclass(frozen=True)
class MapSpec:
    """A BPF hash map as the user asked for it."""

    type: str = "hash"
    prealloc: bool = True
    key_size: int = 4
    value_size: int = 8
    max_entries: int = 1024
    extra_flags: int = 0  # raw map_flags bits ORed in, to probe what the kernel accepts

    def __post_init__(self) -> None:
        if self.type not in bpfsys.MAP_TYPES:
            raise UsageError("type", f"unknown map type {self.type!r}; "
                             f"choose from {', '.join(TYPES)}")
        for name in ("key_size", "value_size", "max_entries", "extra_flags"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0 or value >= 1 << 32:
                raise UsageError(name,
                                 f"{value!r} is not a 32-bit unsigned integer")

    @property
    def flags(self) -> int:
        return (0 if self.prealloc else bpfsys.F_NO_PREALLOC) | self.extra_flags

    @property
    def percpu(self) -> bool:
        return self.type in bpfsys.PERCPU_TYPES

    @property
    def lru(self) -> bool:
        return self.type in bpfsys.LRU_TYPES

    @property
    def label(self) -> str:
        return f"{self.type}/{alloc_label(self.prealloc)}"

    def value_buffer_size(self) -> int:
        """Bytes user space passes for one value: per-CPU maps take one 8-byte
        aligned slot per possible CPU."""
        if self.percpu:
            return ((self.value_size + 7) & ~7) * bpfsys.possible_cpus()
        return self.value_size

    def flags_expr(self) -> str:
        """``map_flags`` as C: ``0``, ``BPF_F_NO_PREALLOC``, or with the extra bits ORed in."""
        parts = ([] if self.prealloc else ["BPF_F_NO_PREALLOC"]) + \
            ([hex(self.extra_flags)] if self.extra_flags else [])
        return "(" + "|".join(parts) + ")" if len(parts) > 1 else (parts or ["0"])[0]

    def cflags(self, name: str = "MAP") -> list[str]:
        """``-D`` defines that ``PYBPFMAP_MAP(name)`` in bpf/pybpfmap_map.h turns
        into this map's BCC declaration."""
        return [
            f'-D{name}_TYPE="{self.type}"',
            f"-D{name}_KEY_SIZE={self.key_size}",
            f"-D{name}_VALUE_SIZE={self.value_size}",
            f"-D{name}_MAX_ENTRIES={self.max_entries}",
            f"-D{name}_FLAGS={self.flags_expr()}",
        ]

    def create(self) -> BpfMap:
        """Create the map with bpf(2); a refusal raises an explained KernelError.

        Where the kernel charges map memory to RLIMIT_MEMLOCK (before v5.11) the
        limit is raised first, as BCC and libbpf do (:mod:`pybpfmap.memlock`)."""
        memlock.ensure_unlimited()
        try:
            fd = bpfsys.map_create(bpfsys.MAP_TYPES[self.type], self.key_size,
                                   self.value_size, self.max_entries, self.flags,
                                   name="pybpfmap")
        except bpfsys.BpfSyscallError as e:
            raise explain_create_error(self, e.errno) from None
        return BpfMap(self, fd)

    def preflight(self) -> None:
        """Create and close the map once, so that a refusal is explained with
        the kernel's errno before BCC (which loses it) tries."""
        self.create().close()


def old_memlock_estimate(spec: MapSpec) -> int:
    """The fdinfo ``memlock`` kernels before v6.4 showed for every map
    (bpf_map_memory_footprint): round_up(key + value, 8) * max_entries, rounded
    up to a page, where a per-CPU value counts once per possible CPU — not what
    the map uses.  Linux kernel commit 304849a27b34 ("bpf: hashtab memory
    usage") (in v6.4) made it report real usage; a figure equal to this
    formula is the old estimate."""
    page = os.sysconf("SC_PAGE_SIZE")
    size = ((spec.key_size + spec.value_buffer_size() + 7) & ~7) * spec.max_entries
    return -(-size // page) * page


def memlock_is_usage(figure: int, spec: MapSpec) -> bool:
    """Whether ``figure``, fdinfo's ``memlock``, shows what the map uses.  Not before v5.11,
    where it is the RLIMIT_MEMLOCK charge computed from max_entries at creation,
    the same with and without BPF_F_NO_PREALLOC (probed: the kernel charges
    RLIMIT_MEMLOCK; Linux kernel commit 80ee81e0403c ("bpf: Eliminate
    rlimit-based memory accounting infra for bpf maps") (in v5.11) ended it);
    nor in 5.11-6.3, where it is :func:`old_memlock_estimate`."""
    return not memlock.charged_by_kernel() and figure != old_memlock_estimate(spec)


def explain_create_error(spec: MapSpec, err: int) -> KernelError:
    """Name the parameter behind a BPF_MAP_CREATE refusal and say what it means."""
    if err == ENOTSUPP and spec.lru and not spec.prealloc:
        return KernelError("no_prealloc", err, f"{spec.type}: {LRU_PREALLOC_ONLY}")
    if err == errno.EINVAL:
        for name in ("max_entries", "key_size", "value_size"):
            if getattr(spec, name) == 0:
                return KernelError(name, err,
                                   f"{spec.type}: {name} must be at least 1")
        if spec.extra_flags & bpfsys.F_NO_COMMON_LRU and not spec.lru:
            return KernelError("map_flags", err, f"{spec.type}: BPF_F_NO_COMMON_LRU "
                               "(0x2) is only valid for LRU maps")
        if spec.extra_flags:
            return KernelError("map_flags", err, f"{spec.type}: the kernel does not accept "
                               f"map_flags {spec.flags:#x} for this map type")
        return KernelError("map_flags", err, f"{spec.type}: the kernel rejected map_flags "
                           f"{spec.flags:#x} with these sizes")
    if err == errno.E2BIG:
        if spec.percpu and spec.value_size > PCPU_MAX_VALUE:
            return KernelError("value_size", err, f"{spec.type}: per-CPU values are at "
                               f"most {PCPU_MAX_VALUE} bytes (PCPU_MIN_UNIT_SIZE)")
        if spec.max_entries > MAX_BUCKETS:
            return KernelError("max_entries", err, f"{spec.max_entries} entries need more "
                               "buckets than a hash map can index (its bucket array must "
                               "stay below 4 GiB)")
        return KernelError("key_size/value_size", err,
                           f"key {spec.key_size} B + value {spec.value_size} B is more "
                           "than one hash element may hold (KMALLOC_MAX_SIZE)")
    if err == errno.ENOMEM:
        what = ("preallocating every element up front" if spec.prealloc
                else "allocating the bucket array")
        return KernelError("max_entries", err, f"{spec.type} with {spec.max_entries} "
                           f"entries: the kernel ran out of memory {what}")
    if err == errno.EPERM:
        limit = memlock.current()
        if limit.charged and limit.soft is not None:
            return KernelError("RLIMIT_MEMLOCK", err, f"{spec.label}: the map does not fit "
                               f"in this process's RLIMIT_MEMLOCK ({limit.describe()}); "
                               f"before {NO_RLIMIT.cite()} map memory is charged to it: raise "
                               "it (ulimit -l unlimited) or run as root")
        return KernelError("permissions", err, "creating BPF maps needs root "
                           "(CAP_BPF or CAP_SYS_ADMIN); try sudo")
    return KernelError(spec.label, err, "the kernel refused to create the map")


_OPS = {
    errno.E2BIG: ("map is full: max_entries={n} reached and a {type} map does not evict; "
                  "delete elements first or raise max_entries"),
    errno.EEXIST: "key exists and BPF_NOEXIST was asked",
    errno.ENOENT: "no such key",
    errno.EINVAL: "the kernel rejected the flags or key",
    errno.ENOMEM: "no memory for a new element (non-preallocated map)",
}


def explain_elem_error(spec: MapSpec, op: str, err: int) -> KernelError:
    """A map element operation (update/lookup/delete) refused, explained."""
    reentry = {errno.EBUSY: "bucket lock already held on this CPU: the kernel refused a "
                            f"re-entrant map op ({MAP_LOCKED.cite()})",
               errno.EDEADLK: "re-entrant map op detected by the resilient bucket lock "
                              f"({RQSPINLOCK.cite()})"}
    text = reentry.get(err) or _OPS.get(err, f"{op} failed").format(n=spec.max_entries,
                                                                     type=spec.type)
    return KernelError(f"{op} on {spec.label}", err, text)


class BpfMap:
    """A map created with bpf(2), owned by this object: use as a context manager."""

    def __init__(self, spec: MapSpec, fd: int):
        self.spec = spec
        self.fd = fd
        self._key = (ctypes.c_ubyte * max(spec.key_size, 1))()
        self._value = (ctypes.c_ubyte * max(spec.value_buffer_size(), 1))()

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _set_key(self, key: int) -> None:
        self._key[:] = key.to_bytes(self.spec.key_size, "little")

    def update(self, key: int, value: int = 0, flags: int = bpfsys.ANY) -> None:
        """Update ``key`` (an integer, little-endian in key_size bytes)."""
        self._set_key(key)
        ctypes.memset(self._value, 0, len(self._value))
        data = value.to_bytes(8, "little")[:self.spec.value_size]
        slot = (self.spec.value_size + 7) & ~7 if self.spec.percpu else 0
        for cpu in range(bpfsys.possible_cpus() if self.spec.percpu else 1):
            self._value[cpu * slot:cpu * slot + len(data)] = data
        try:
            bpfsys.update(self.fd, self._key, self._value, flags)
        except bpfsys.BpfSyscallError as e:
            raise explain_elem_error(self.spec, "update", e.errno) from None

    def lookup(self, key: int) -> list[int]:
        """The value of ``key``: one integer, or one per possible CPU for per-CPU maps."""
        self._set_key(key)
        try:
            bpfsys.lookup(self.fd, self._key, self._value)
        except bpfsys.BpfSyscallError as e:
            raise explain_elem_error(self.spec, "lookup", e.errno) from None
        raw = bytes(self._value)
        width = min(self.spec.value_size, 8)
        if not self.spec.percpu:
            return [int.from_bytes(raw[:width], "little")]
        slot = (self.spec.value_size + 7) & ~7
        return [int.from_bytes(raw[i:i + width], "little") for i in range(0, len(raw), slot)]

    def delete(self, key: int) -> None:
        self._set_key(key)
        try:
            bpfsys.delete(self.fd, self._key)
        except bpfsys.BpfSyscallError as e:
            raise explain_elem_error(self.spec, "delete", e.errno) from None

    def keys(self) -> list[int]:
        """Every key in the map, as the kernel iterates them."""
        out = []
        cur = None
        nxt = (ctypes.c_ubyte * max(self.spec.key_size, 1))()
        while True:
            try:
                bpfsys.next_key(self.fd, cur, nxt)
            except bpfsys.BpfSyscallError as e:
                if e.errno == errno.ENOENT:
                    return out
                raise explain_elem_error(self.spec, "get_next_key", e.errno) from None
            out.append(int.from_bytes(bytes(nxt), "little"))
            cur = (ctypes.c_ubyte * len(nxt)).from_buffer_copy(nxt)

    def fill(self, count: int) -> None:
        """Insert keys 0..count-1 (BPF_NOEXIST)."""
        if count > 256 ** self.spec.key_size:
            raise UsageError("key_size", f"{self.spec.key_size}-byte keys cannot hold "
                             f"{count} distinct keys")
        for key in range(count):
            self.update(key, key, bpfsys.NOEXIST)

    def drain(self) -> int:
        """Delete every key; return how many were deleted."""
        keys = self.keys()
        for key in keys:
            self.delete(key)
        return len(keys)

    def kernel_view(self) -> dict:
        """What the kernel says about this map (bpf_map_info and fdinfo)."""
        info = bpfsys.map_info(self.fd)
        fdinfo = bpfsys.fdinfo(self.fd)
        return {
            "id": info.id,
            "map_type": info.type,
            "key_size": info.key_size,
            "value_size": info.value_size,
            "max_entries": info.max_entries,
            "map_flags": info.map_flags,
            "memlock": int(fdinfo.get("memlock", "0")),
        }

    def memlock(self) -> int:
        """Bytes the kernel charges for this map (fdinfo ``memlock``)."""
        return int(bpfsys.fdinfo(self.fd).get("memlock", "0"))

    def memlock_is_estimate(self) -> bool:
        """True when fdinfo memlock is not real usage (:func:`memlock_is_usage`)."""
        return not memlock_is_usage(self.memlock(), self.spec)
