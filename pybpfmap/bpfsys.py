"""The bpf(2) syscall, for the few commands where BCC hides the errno.

BCC's ``Table.__setitem__`` raises a bare ``Exception`` with strerror text
and BCC's map creation prints to stderr; pybpfmap needs the kernel's errno to
explain a refusal, so map creation, element operations and object info go
through this thin ctypes layer.  Only the leading fields of each ``union
bpf_attr`` member are declared; the kernel zero-checks the rest
(include/uapi/linux/bpf.h).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "s390x": 351, "ppc64le": 361}

# enum bpf_cmd
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_TEST_RUN = 10
PROG_GET_NEXT_ID = 11
MAP_GET_NEXT_ID = 12
OBJ_GET_INFO_BY_FD = 15
ENABLE_STATS = 32

# enum bpf_map_type
MAP_TYPES = {
    "hash": 1,
    "percpu_hash": 5,
    "lru_hash": 9,
    "lru_percpu_hash": 10,
}
PERCPU_TYPES = {"percpu_hash", "lru_percpu_hash"}
LRU_TYPES = {"lru_hash", "lru_percpu_hash"}

# map_flags
F_NO_PREALLOC = 1 << 0
F_NO_COMMON_LRU = 1 << 1

# update flags
ANY = 0
NOEXIST = 1
EXIST = 2

_ATTR_SIZE = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfSyscallError(OSError):
    """bpf(2) failed; ``errno`` is the kernel's answer, ``cmd`` the bpf command."""

    def __init__(self, cmd: int, err: int):
        super().__init__(err, os.strerror(err) if err < 512 else f"kernel errno {err}")
        self.cmd = cmd


def bpf(cmd: int, attr: ctypes.Structure | ctypes.Array) -> int:
    """Call bpf(cmd, &attr, sizeof(attr)); return its result or raise BpfSyscallError."""
    nr = _NR_BPF[platform.machine()]
    ret = _libc.syscall(nr, ctypes.c_int(cmd), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        raise BpfSyscallError(cmd, ctypes.get_errno())
    return ret


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
        ("_pad", ctypes.c_char * (_ATTR_SIZE - 44)),
    ]


class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # also next_key
        ("flags", ctypes.c_uint64),
        ("_pad", ctypes.c_char * (_ATTR_SIZE - 32)),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
        ("_pad", ctypes.c_char * (_ATTR_SIZE - 16)),
    ]


class MapInfo(ctypes.Structure):
    """struct bpf_map_info, the fields pybpfmap reads."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("_rest", ctypes.c_char * 64),
    ]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               map_flags: int = 0, name: str = "") -> int:
    """BPF_MAP_CREATE; returns the new map's fd (the caller closes it)."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=map_flags,
                          map_name=name.encode()[:15])
    return bpf(MAP_CREATE, attr)


def _elem(cmd: int, fd: int, key: ctypes.Array, value: ctypes.Array | None, flags: int) -> None:
    attr = _ElemAttr(map_fd=fd, key=ctypes.addressof(key),
                     value=ctypes.addressof(value) if value is not None else 0, flags=flags)
    bpf(cmd, attr)


def update(fd: int, key: ctypes.Array, value: ctypes.Array, flags: int = ANY) -> None:
    _elem(MAP_UPDATE_ELEM, fd, key, value, flags)


def lookup(fd: int, key: ctypes.Array, value: ctypes.Array) -> None:
    _elem(MAP_LOOKUP_ELEM, fd, key, value, 0)


def delete(fd: int, key: ctypes.Array) -> None:
    _elem(MAP_DELETE_ELEM, fd, key, None, 0)


def next_key(fd: int, key: ctypes.Array | None, out: ctypes.Array) -> None:
    """BPF_MAP_GET_NEXT_KEY: ``key=None`` asks for the first key."""
    attr = _ElemAttr(map_fd=fd, key=ctypes.addressof(key) if key is not None else 0,
                     value=ctypes.addressof(out))
    bpf(MAP_GET_NEXT_KEY, attr)


# --- batch operations (pybpfmap stress: the writers scenario) ------------------

MAP_LOOKUP_AND_DELETE_BATCH = 25
MAP_UPDATE_BATCH = 26


class _BatchAttr(ctypes.Structure):
    """The ``batch`` member of union bpf_attr (the BPF_MAP_*_BATCH commands)."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("_pad", ctypes.c_char * (_ATTR_SIZE - 56)),
    ]


def lookup_and_delete_batch(fd: int, keys: ctypes.Array, values: ctypes.Array, count: int,
                            in_batch: ctypes.Array | None, out_batch: ctypes.Array
                            ) -> tuple[int, bool]:
    """BPF_MAP_LOOKUP_AND_DELETE_BATCH: move up to ``count`` elements into
    ``keys`` and ``values``, from the position ``in_batch`` holds (None: the
    beginning); ``out_batch`` gets the next position (a hash map's is its
    4-byte bucket index).  (elements moved, whether the walk reached the end
    of the map): the kernel says the end with ENOENT and still reports what
    it moved.  Any other error raises :class:`BpfSyscallError`."""
    attr = _BatchAttr(in_batch=ctypes.addressof(in_batch) if in_batch is not None else 0,
                      out_batch=ctypes.addressof(out_batch), keys=ctypes.addressof(keys),
                      values=ctypes.addressof(values), count=count, map_fd=fd)
    try:
        bpf(MAP_LOOKUP_AND_DELETE_BATCH, attr)
    except BpfSyscallError as e:
        if e.errno == errno.ENOENT:
            return attr.count, True
        raise
    return attr.count, False


def update_batch(fd: int, keys: ctypes.Array, values: ctypes.Array, count: int,
                 elem_flags: int = ANY) -> tuple[int, int | None]:
    """BPF_MAP_UPDATE_BATCH (v5.6): update ``count`` elements from ``keys`` and
    ``values`` in one call.  Each is a BPF_ANY update: ``elem_flags`` takes
    BPF_F_LOCK only (generic_map_update_batch refuses BPF_NOEXIST with EINVAL).
    (elements the kernel reports as processed, its errno or None): on a
    failure the kernel stops at that element and still writes back how many it
    updated before it, so the errno is returned, not raised."""
    attr = _BatchAttr(keys=ctypes.addressof(keys), values=ctypes.addressof(values),
                      count=count, map_fd=fd, elem_flags=elem_flags)
    try:
        bpf(MAP_UPDATE_BATCH, attr)
    except BpfSyscallError as e:
        return attr.count, e.errno
    return attr.count, None


class _NextIdAttr(ctypes.Structure):
    _fields_ = [
        ("start_id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("_pad", ctypes.c_char * (_ATTR_SIZE - 8)),
    ]


def all_ids(cmd: int) -> set[int]:
    """Every ID that BPF_MAP_GET_NEXT_ID / BPF_PROG_GET_NEXT_ID walks through."""
    ids: set[int] = set()
    attr = _NextIdAttr(start_id=0)
    while True:
        try:
            bpf(cmd, attr)
        except BpfSyscallError as e:
            if e.errno == errno.ENOENT:
                return ids
            raise
        ids.add(attr.next_id)
        attr.start_id = attr.next_id


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a map: the kernel's own view of it."""
    info = MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(OBJ_GET_INFO_BY_FD, attr)
    return info


def fdinfo(fd: int, pid: int | str = "self") -> dict[str, str]:
    """/proc/<pid>/fdinfo/<fd> as a dict (``memlock``, ``map_flags``, ...)."""
    out = {}
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU map values have one slot for each."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class _TestRunAttr(ctypes.Structure):
    """The ``test`` member of union bpf_attr (BPF_PROG_TEST_RUN)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_char * (_ATTR_SIZE - 76)),
    ]


class TestRun(ctypes.Structure):
    """What BPF_PROG_TEST_RUN returned: the program's return value and the
    kernel's average duration of one run over ``repeat`` runs, in ns."""

    _fields_ = [("retval", ctypes.c_uint32), ("duration_ns", ctypes.c_uint32)]


TEST_RUN_ON_CPU = 1 << 0  # BPF_F_TEST_RUN_ON_CPU (raw_tp only)


def prog_test_run(prog_fd: int, data: bytes | None = None, repeat: int = 1,
                  flags: int = 0, cpu: int = 0, ctx_in: bytes | None = None) -> TestRun:
    """BPF_PROG_TEST_RUN: run ``prog_fd`` ``repeat`` times on ``data`` (a packet
    for skb/XDP programs) in the calling thread's CPU.  ``duration_ns`` is the
    kernel's per-run average (kernel/bpf: bpf_test_timer).  ``ctx_in`` is the
    context handed to the program: for a raw tracepoint program its u64
    arguments, with no ``data`` and ``repeat=0`` (bpf_prog_test_run_raw_tp
    refuses anything else with EINVAL; duration_ns stays 0)."""
    buf = ctypes.create_string_buffer(data, len(data)) if data else None
    ctx = ctypes.create_string_buffer(ctx_in, len(ctx_in)) if ctx_in else None
    attr = _TestRunAttr(prog_fd=prog_fd, repeat=repeat, flags=flags, cpu=cpu,
                        data_size_in=len(data) if data else 0,
                        data_in=ctypes.addressof(buf) if buf is not None else 0,
                        ctx_size_in=len(ctx_in) if ctx_in else 0,
                        ctx_in=ctypes.addressof(ctx) if ctx is not None else 0)
    bpf(PROG_TEST_RUN, attr)
    return TestRun(retval=attr.retval, duration_ns=attr.duration)


class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to attach_btf_id (232 bytes in v6.x).  ``run_cnt``
    and ``run_time_ns`` are counted only while kernel.bpf_stats_enabled is 1;
    ``recursion_misses`` since Linux kernel commit 9ed9e9ba2337 ("bpf: Count the
    number of times recursion was prevented") (in v5.12)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("attach_btf_obj_id", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
    ]


# --- Run-time statistics (pybpfmap stress) ---------------------------------

_RECURSION_MISSES_END = ProgInfo.recursion_misses.offset + 8


def prog_info(fd: int) -> tuple[ProgInfo, bool]:
    """BPF_OBJ_GET_INFO_BY_FD on a program: (info, whether the kernel filled
    in ``recursion_misses``).  Older kernels return a shorter info_len; the
    fields they do not know stay zero."""
    info = ProgInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(OBJ_GET_INFO_BY_FD, attr)
    return info, attr.info_len >= _RECURSION_MISSES_END


class _EnableStatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("_pad", ctypes.c_char * (_ATTR_SIZE - 4))]


STATS_RUN_TIME = 0


@contextmanager
def stats_enabled() -> Iterator[None]:
    """Keep run_cnt/run_time_ns counting while inside: BPF_ENABLE_STATS (v5.8)
    returns an fd and the kernel counts while any such fd is open, without
    touching the ``kernel.bpf_stats_enabled`` sysctl."""
    fd = bpf(ENABLE_STATS, _EnableStatsAttr(type=STATS_RUN_TIME))
    try:
        yield
    finally:
        os.close(fd)


# --- object lookup by ID (pybpfmap.bcc_compare: verify a BCC tool's maps) ---

MAP_GET_FD_BY_ID = 14


class _GetFdByIdAttr(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
        ("_pad", ctypes.c_char * (_ATTR_SIZE - 12)),
    ]


def map_fd_by_id(map_id: int) -> int:
    """BPF_MAP_GET_FD_BY_ID: a new fd for map ``map_id`` (the caller closes it)."""
    return bpf(MAP_GET_FD_BY_ID, _GetFdByIdAttr(id=map_id))


# --- program load with the verifier's log (pybpfmap.kfacts: ask the verifier) ---

PROG_LOAD = 5
PROG_TYPE_TRACEPOINT = 5
PSEUDO_MAP_FD = 1


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("_pad", ctypes.c_char * (_ATTR_SIZE - 64)),
    ]


class ProgLoadError(BpfSyscallError):
    """BPF_PROG_LOAD failed; ``log`` is what the verifier said."""

    def __init__(self, err: int, log: str):
        super().__init__(PROG_LOAD, err)
        self.log = log


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn (the register nibbles in this machine's bitfield order)."""
    regs = (src << 4 | dst) if sys.byteorder == "little" else (dst << 4 | src)
    return struct.pack("=BBhi", code, regs, off, imm)


def ld_map_fd(dst: int, fd: int) -> bytes:
    """``dst = map`` (BPF_LD | BPF_IMM | BPF_DW with BPF_PSEUDO_MAP_FD): two insns."""
    return insn(0x18, dst, PSEUDO_MAP_FD, 0, fd) + insn(0)


def prog_load(prog_type: int, insns: bytes, license: str = "GPL", name: str = "",
              log_level: int = 1, log_size: int = 1 << 16) -> tuple[int, str]:
    """BPF_PROG_LOAD with a verifier log: (fd, log); the caller closes the fd.
    A refusal raises :class:`ProgLoadError` with the log.  At ``log_level`` 1
    the verifier rewinds its log after a successful check (do_check_common's
    pop_log), keeping only the statistics; level 2 keeps everything."""
    log = ctypes.create_string_buffer(log_size)
    lic = ctypes.create_string_buffer(license.encode())
    code = ctypes.create_string_buffer(insns, len(insns))
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(code), license=ctypes.addressof(lic),
                         log_level=log_level, log_size=log_size, log_buf=ctypes.addressof(log),
                         prog_name=name.encode()[:15])
    try:
        fd = bpf(PROG_LOAD, attr)
    except BpfSyscallError as e:
        raise ProgLoadError(e.errno, log.value.decode(errors="replace")) from None
    return fd, log.value.decode(errors="replace")
