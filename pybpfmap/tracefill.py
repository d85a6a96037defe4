"""Fill a map from a tracing program, and by one batch update from user space.

:func:`fill` inserts new keys into a map user space made (:class:`BpfMap`,
possibly inside a memory cgroup) from ``bpf/tracefill.c``: a raw tracepoint
program never attached, run with BPF_PROG_TEST_RUN by one thread per CPU, each
pinned to its CPU and inserting its own range of keys, up to ``burst`` keys
(BPF_NOEXIST) per run.  bpf_prog_test_run_raw_tp (v5.10) runs the program
with preemption disabled and under rcu_read_lock(), the context of a tracing
program, so a BPF_F_NO_PREALLOC map allocates there as the seed commit
describes (:data:`pybpfmap.commits.PREALLOC`): before
:data:`pybpfmap.commits.MEM_ALLOC` with kmalloc and alloc_percpu(GFP_ATOMIC)
on every insert, since then from bpf_mem_alloc's per-CPU caches of a few
spare elements, refilled from irq_work with GFP_NOWAIT (per-CPU values: 16 to
48 of 512 bytes in 6.1, 1 to 3 of any size in 7.3's memalloc.c).  Every
result is counted by errno in the program; the kernel's own record of failed
per-CPU allocations (tracepoint ``percpu:percpu_alloc_percpu_fail``, counted
system-wide while the fill runs) comes beside it.

``e2big_while_not_full`` is E2BIG seen although the map held fewer than
max_entries at the end (nothing is deleted meanwhile): a refusal with room
left.  A preallocated map says E2BIG when its freelist is empty, which is
exact.  A NO_PREALLOC map counts its elements: up to v6.0 with
atomic_inc_return() > max_entries, exact too; since :data:`pybpfmap.commits.ELEM_COUNT`, with a
per-CPU counter when max_entries / 2 > online CPUs * 32 (an atomic_t below),
tested by is_map_full() before the increment.  __percpu_counter_compare()
trusts the rough per-CPU-batched count only when it is more than 32 * online
CPUs away from max_entries and sums every CPU's part otherwise, so near the
limit it is exact as well.  Expected: no E2BIG with room left, in any era,
except for a moment while a concurrent insert that ends in ENOMEM is counted
(the count is raised before the allocation and lowered after it fails).  What
86fe28f7692d changes instead is that test and increment are no longer one
atomic step: two CPUs can both pass at max_entries - 1, so ``entries_after``
may exceed max_entries by up to one less than the number of CPUs filling.
Measured from 2 CPUs (6.18 host; 5.10 and 6.1 test VMs): no E2BIG with room
left, also where ENOMEM and E2BIG meet at the limit (percpu_hash, 512-byte
values, max_entries 300-2000 on 6.18), and no overfill seen.

:func:`batch_insert` puts keys 0..count-1 into a map in one
BPF_MAP_UPDATE_BATCH from user space (BPF_ANY: the batch takes no
BPF_NOEXIST) and reports how many the kernel processed and its errno.

Nothing stays loaded or pinned after either returns, also on Ctrl-C: the
program is loaded by :func:`pybpfmap.loader.bcc_program`, the map is pinned
only while BCC compiles, and the threads are stopped before the program is
unloaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import threading
import time
from dataclasses import dataclass, field

from pybpfmap import bpfsys, tracefs
from pybpfmap.errors import EnvironmentProblem, KernelError, UsageError, errno_name
from pybpfmap.loader import bcc_program, load_func
from pybpfmap.maps import BpfMap
from pybpfmap.memcg import meminfo
from pybpfmap.pin import bpffs, pinned

SOURCE = "tracefill.c"
DEFAULT_BURST = 256
MAX_BURST = 1024     # the verifier walks every iteration (6.18 gives up between 3000 and 4096)
NERRNO = 1024        # counter slots: 0 = inserted, errnos 1..1022 (ENOTSUPP 524), then "other"
PCPU_FAIL_TP = ("percpu", "percpu_alloc_percpu_fail")

@dataclass
class FillResult:
    """One :func:`fill`: what the program counted, and the map and memory after."""

    max_entries: int
    attempts: int                      # keys the program tried to insert
    inserted: int
    errors: dict[str, int]             # errno name -> inserts refused with it
    entries_after: int                 # keys in the map at the end
    e2big_while_not_full: bool         # E2BIG although entries_after < max_entries
    pcpu_alloc_failures: int | None    # percpu_alloc_percpu_fail events (None: no tracepoint)
    pcpu_atomic_failures: int | None   # ... of those, atomic (GFP_ATOMIC/GFP_NOWAIT) ones
    mem_free: int                      # /proc/meminfo MemFree at the end, bytes
    mem_available: int                 # /proc/meminfo MemAvailable at the end, bytes
    burst: int                         # keys per program run
    cpus: list[int]
    seconds: float                     # the inserting threads' wall time
    attempts_by_cpu: dict[int, int] = field(default_factory=dict)  # where the program ran

    def summary(self) -> str:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "no errors"
        return (f"{self.inserted}/{self.attempts} inserted on CPUs {self.cpus} ({errs}); "
                f"{self.entries_after}/{self.max_entries} entries; pcpu alloc failures "
                f"{self.pcpu_alloc_failures}; MemFree {self.mem_free >> 20} MiB")


@dataclass
class BatchResult:
    """One :func:`batch_insert`: keys asked for, processed, and the errno (name) if any."""

    asked: int
    processed: int
    error: str | None


def _check(bmap: BpfMap, count: int, cpus: list[int], burst: int, first: int) -> None:
    if bmap.spec.key_size < 4:
        raise UsageError("key_size", f"{bmap.spec.key_size}: the program writes 4-byte keys")
    if not 1 <= burst <= MAX_BURST:
        raise UsageError("burst", f"{burst}: must be 1..{MAX_BURST}")
    if count < 0 or first < 0 or first + count > 1 << 32:
        raise UsageError("count", f"keys {first}..{first + count - 1} do not fit in 32 bits")
    allowed = os.sched_getaffinity(0)
    if not cpus or len(set(cpus)) != len(cpus) or not set(cpus) <= allowed:
        raise UsageError("cpus", f"{cpus}: give distinct CPUs this process may run on "
                         f"({sorted(allowed)})")


def _ranges(first: int, count: int, n: int) -> list[tuple[int, int]]:
    """(first key, keys) of each of ``n`` disjoint contiguous slices of the range."""
    q, r = divmod(count, n)
    out, start = [], first
    for i in range(n):
        size = q + (i < r)
        out.append((start, size))
        start += size
    return out


def _pcpu_tracepoint() -> bool:
    with contextlib.suppress(EnvironmentProblem):
        tracefs.ensure_tracefs()
    return tracefs.event_exists(*PCPU_FAIL_TP)


def count_entries(bmap: BpfMap) -> int:
    """Keys in the map, walked with BPF_MAP_GET_NEXT_KEY (not kept)."""
    size = max(bmap.spec.key_size, 1)
    cur, nxt = (ctypes.c_ubyte * size)(), (ctypes.c_ubyte * size)()
    n, start = 0, True
    while True:
        try:
            bpfsys.next_key(bmap.fd, None if start else cur, nxt)
        except bpfsys.BpfSyscallError as e:
            if e.errno == errno.ENOENT:
                return n
            raise KernelError("get_next_key", e.errno, "walking the filled map failed") \
                from None
        n, start = n + 1, False
        cur, nxt = nxt, cur


def _inserter(fd: int, cpu: int, first: int, count: int, burst: int, stop: threading.Event,
              done: dict[int, tuple[int, int]], errors: list[BaseException]) -> None:
    """One thread: pinned to ``cpu``, insert keys first..first+count-1 by bursts."""
    asked = inserted = 0
    try:
        os.sched_setaffinity(0, {cpu})  # 0 = this thread
        key, end = first, first + count
        while key < end and not stop.is_set():
            n = min(burst, end - key)
            try:
                run = bpfsys.prog_test_run(fd, repeat=0, ctx_in=struct.pack("=QQ", key, n))
            except bpfsys.BpfSyscallError as e:
                raise KernelError("BPF_PROG_TEST_RUN", e.errno, f"the kernel refused to "
                                  f"test-run fill_burst on CPU {cpu}") from None
            asked, inserted, key = asked + n, inserted + run.retval, key + n
    except BaseException as e:  # re-raised in the caller's thread
        errors.append(e)
        stop.set()
    finally:
        done[cpu] = (asked, inserted)


def _run_threads(fd: int, cpus: list[int], ranges: list[tuple[int, int]], burst: int
                 ) -> dict[int, tuple[int, int]]:
    """The inserters, one per CPU; {cpu: (keys tried, keys inserted)}.  On any
    exit (Ctrl-C included) every thread is stopped and joined before the
    program can be unloaded: each finishes at most one run."""
    stop = threading.Event()
    done: dict[int, tuple[int, int]] = {}
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_inserter, daemon=True,
                                args=(fd, cpu, k0, n, burst, stop, done, errors))
               for cpu, (k0, n) in zip(cpus, ranges, strict=True)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join()
    if errors:
        raise errors[0]
    return done


def _slots(table) -> list[list[int]]:
    """A BCC per-CPU array of u64 as [index][cpu]."""
    return [list(table[ctypes.c_int(i)]) for i in range(len(table))]


def _counts(table) -> list[list[int]]:
    """fill_counts (one ``struct { u64 n[NERRNO]; }`` per CPU) as [slot][cpu]."""
    cpus = bpfsys.possible_cpus()
    buf = (ctypes.c_uint64 * (NERRNO * cpus))()
    bpfsys.lookup(table.map_fd, (ctypes.c_uint32 * 1)(0), buf)
    return [[buf[c * NERRNO + s] for c in range(cpus)] for s in range(NERRNO)]


def fill(bmap: BpfMap, count: int, cpus: list[int], burst: int = DEFAULT_BURST,
         first: int = 0) -> FillResult:
    """Insert keys first..first+count-1 into ``bmap`` from the raw tracepoint
    program, one pinned thread per CPU in ``cpus``, each with its own
    contiguous slice of the keys; ``burst`` keys per BPF_PROG_TEST_RUN.  A
    verifier refusal (PREEMPT_RT: "trace type programs can only use
    preallocated hash map") is a :class:`KernelError` with its errno."""
    _check(bmap, count, cpus, burst, first)
    spec = bmap.spec
    pcpu = _pcpu_tracepoint()
    flags = [*spec.cflags("MAP"), f"-DBURST={burst}", f"-DNERRNO={NERRNO}"]
    if pcpu:
        flags.append("-DPCPU_FAIL_TP")
    with contextlib.ExitStack() as stack:
        fs = stack.enter_context(bpffs())
        with pinned(bmap.fd, fs) as path:
            b = stack.enter_context(bcc_program(SOURCE, cflags=[*flags,
                                                                f'-DMAP_PINNED="{path}"']))
        from bcc import BPF

        fd = load_func(b, "fill_burst", BPF.RAW_TRACEPOINT, f"bpf/{SOURCE}")
        t0 = time.monotonic()
        done = _run_threads(fd, cpus, _ranges(first, count, len(cpus)), burst)
        seconds = time.monotonic() - t0
        counts = _counts(b[b"fill_counts"])
        fails = [sum(c) for c in _slots(b[b"pcpu_fail"])] if pcpu else None
    mem = meminfo()

    attempts = sum(a for a, _ in done.values())
    inserted = sum(i for _, i in done.values())
    errors: dict[str, int] = {}
    for slot, per_cpu in enumerate(counts[1:], start=1):
        if sum(per_cpu):
            name = "other" if slot == NERRNO - 1 else errno_name(slot)
            errors[name] = errors.get(name, 0) + sum(per_cpu)
    counted = sum(sum(c) for c in counts)
    if sum(counts[0]) != inserted or counted != attempts:
        raise EnvironmentProblem(f"bpf/{SOURCE}", f"the program counted {sum(counts[0])} "
                                 f"inserts of {counted} but its runs returned {inserted} of "
                                 f"{attempts}")
    by_cpu = {c: sum(counts[s][c] for s in range(NERRNO)) for c in range(len(counts[0]))}
    entries = count_entries(bmap)
    return FillResult(
        max_entries=spec.max_entries, attempts=attempts, inserted=inserted, errors=errors,
        entries_after=entries,
        e2big_while_not_full=errors.get("E2BIG", 0) > 0 and entries < spec.max_entries,
        pcpu_alloc_failures=sum(fails) if fails is not None else None,
        pcpu_atomic_failures=fails[1] if fails is not None else None,
        mem_free=mem.get("MemFree", 0), mem_available=mem.get("MemAvailable", 0),
        burst=burst, cpus=list(cpus), seconds=seconds,
        attempts_by_cpu={c: n for c, n in by_cpu.items() if n})


def batch_insert(bmap: BpfMap, count: int) -> BatchResult:
    """Keys 0..count-1 (value 0) into ``bmap`` with one BPF_MAP_UPDATE_BATCH."""
    spec = bmap.spec
    if count < 1 or count > 256 ** min(spec.key_size, 8):
        raise UsageError("count", f"{count}: 1..{256 ** min(spec.key_size, 8)} keys of "
                         f"{spec.key_size} bytes")
    keys = (ctypes.c_ubyte * (count * spec.key_size))()
    for k in range(count):
        keys[k * spec.key_size:k * spec.key_size + min(spec.key_size, 8)] = \
            k.to_bytes(8, "little")[:spec.key_size]
    values = (ctypes.c_ubyte * (count * spec.value_buffer_size()))()
    processed, err = bpfsys.update_batch(bmap.fd, keys, values, count)
    return BatchResult(count, processed, errno_name(err) if err is not None else None)
