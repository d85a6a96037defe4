"""The allocation ledger: the kernel memory one process's bpf(2) calls leave
allocated, from the kernel's own record of each allocation — for kernels that
do not charge BPF maps to the memory cgroup (before Linux kernel commit
d5299b67dd59 ("bpf: Memcg-based memory accounting for bpf maps") (in v5.11);
Debian bullseye's 5.10), where the only other figures are system-wide deltas.

``bpf/ledger.c``, on tracepoints:

- ``raw_syscalls:sys_enter``/``sys_exit`` flag a thread of the followed
  process while it is inside bpf(2) (not for ``MAP_LOOKUP_ELEM``,
  ``MAP_GET_NEXT_KEY``, ``OBJ_GET_INFO_BY_FD``: the ledger reads itself with
  them, and they only allocate copies they free again);
- ``kmem:kmalloc`` (and ``kmem:kmalloc_node`` where it exists: 5.10 has both,
  6.1 merged them) and ``percpu:percpu_alloc_percpu`` by a flagged thread are
  remembered by address, with size and call site, in a preallocated hash (the
  ledger never allocates); ``kmem:kfree``/``percpu:percpu_free_percpu`` of a
  remembered address, in any context (the RCU callbacks that free
  BPF_F_NO_PREALLOC elements run in softirq), subtract and forget it.  Key and
  value copies net to zero; what stays is what the map holds.  Live bytes
  are kept per kind and per call site, with a running peak of their sum
  (updated without a lock: two CPUs may race on it);
- kmalloc bytes are ``bytes_alloc`` (the slab object).  Per-CPU bytes are
  ``bytes_alloc`` where the event has it (6.0+), else ``size`` × possible
  CPUs: a per-CPU chunk has a unit for every possible CPU and the area is
  taken in each (5.10's per-CPU memcg charge is the same product);
- vmalloc has no tracepoint on 5.10: new ``/proc/vmallocinfo`` areas since
  the start whose caller allocates a BPF map area count ``pages=`` × page size
  (the size column adds a guard page).  The caller shown is
  ``__bpf_map_area_alloc``'s return address: ``bpf_map_area_alloc``, or the
  map's own function when the compiler inlines it (``htab_map_alloc`` on 5.10
  and 6.18), hence :data:`MAP_AREA_CALLERS`.  vmallocinfo names no process:
  any process's new map areas count.  Map areas are allocated only at
  creation, so the peak is the ledger's peak + vmalloc.

Raw tracepoint programs, not perf tracepoint ones: before v5.11 bpf(2) runs
each map update and delete inside ``bpf_disable_instrumentation()``, which
raises ``bpf_prog_active``, and ``trace_call_bpf()`` (kernel/trace/bpf_trace.c)
then runs no tracepoint program on that CPU; raw tracepoint programs ignore
it.  Their arguments are TP_PROTO's, in the order of the event's tracefs
``format`` fields (so in 5.10's and 6.1's headers): one ``bpf/ledger.c``
serves both layouts through ``-D``.  From 6.1 a raw tracepoint program that
fires inside itself on one CPU is skipped (Linux kernel commit 05b24ff9b2cf
("bpf: Prevent bpf program recursion for raw tracepoint probes") (in v6.1)):
a free in an interrupt taken while the ledger runs is then missed, which the
programs' ``recursion_misses`` count (:attr:`Reading.missed`).

Not seen: allocations made outside bpf(2) — by BPF programs run from tracing
programs; on 6.1+ most BPF_F_NO_PREALLOC elements' memory, which bpf_mem_alloc
refills from irq_work (seen only when that runs on the thread still inside
bpf(2)) and keeps in per-CPU caches after a delete (Linux kernel commit
fba1a1c6c912 ("bpf: Convert hash map to bpf_mem_alloc.") (in v6.1));
kmem_cache_alloc, page allocations, frees that bypass kfree.  Interrupts
taken inside bpf(2) are charged to the thread (foreign call sites until
freed).  So: what user space's bpf(2) calls allocate — map creation,
updates, deletes, BPF_PROG_TEST_RUN of non-tracing programs.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from pybpfmap import bpfsys, tracefs
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.loader import bcc_program
from pybpfmap.procs import wait_until

if TYPE_CHECKING:
    from bcc import BPF

METHOD = "kernel allocation ledger: kmem/percpu tracepoints in bpf(2) + /proc/vmallocinfo"

VMALLOCINFO = "/proc/vmallocinfo"
# Functions that call bpf_map_area_alloc()/bpf_map_area_mmapable_alloc() in
# kernel/bpf of 5.10, 6.1 and 7.2, and those two themselves.
MAP_AREA_CALLERS = frozenset({
    "__bpf_map_area_alloc", "bpf_map_area_alloc", "bpf_map_area_mmapable_alloc",
    "htab_map_alloc", "prealloc_init", "array_map_alloc", "bloom_map_alloc",
    "bpf_local_storage_map_alloc", "bpf_map_offload_map_alloc", "bpf_ringbuf_area_alloc",
    "ringbuf_map_alloc", "bpf_struct_ops_map_alloc", "cgroup_storage_map_alloc",
    "cpu_map_alloc", "dev_map_alloc", "dev_map_create_hash", "dev_map_init_map",
    "prealloc_elems_and_freelist", "queue_stack_map_alloc", "reuseport_array_alloc",
    "stack_map_alloc", "trie_alloc", "arena_map_alloc", "insn_array_alloc",
    "rhtab_map_alloc",
})

# Table sizes.  LIVE_ENTRIES holds a 100000-entry per-CPU NO_PREALLOC hash
# on 5.10 (an element and a per-CPU area each) with room to spare.
LIVE_ENTRIES = 1 << 19
SITE_ENTRIES = 4096
THREAD_ENTRIES = 1024
SITES_SHOWN = 8

# bpf/ledger.c's stats[] slots.
_KMALLOC, _PERCPU, _PEAK, _DROPPED, _LOST_CALLS, _ALLOCS, _FREES, _ARMED = range(8)

# (category, event): the fields the ledger needs.  It also reads
# percpu_alloc_percpu's call_site and bytes_alloc (6.0+) where present, and
# kmem:kmalloc_node (before 6.1) where it exists.
_EVENTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("kmem", "kmalloc"): ("call_site", "ptr", "bytes_alloc"),
    ("kmem", "kfree"): ("ptr",),
    ("percpu", "percpu_alloc_percpu"): ("size", "ptr"),
    ("percpu", "percpu_free_percpu"): ("ptr",),
    ("raw_syscalls", "sys_enter"): (),  # raw tracepoint arguments: regs, id
    ("raw_syscalls", "sys_exit"): (),
}
_KMALLOC_NODE = ("kmem", "kmalloc_node")


def event_fields(category: str, name: str) -> list[str] | None:
    """The fields of tracepoint ``category:name`` after the common ones, in
    format-file order (a raw tracepoint's argument positions for the events
    the ledger uses); None if the event or its format is missing."""
    path = os.path.join(tracefs.TRACEFS, "events", category, name, "format")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    fields = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        decl = line[len("field:"):].split(";", 1)[0].strip()
        field = decl.split()[-1].split("[", 1)[0].lstrip("*")
        if not field.startswith("common_"):
            fields.append(field)
    return fields


def _arg(fields: list[str], name: str) -> int:
    return fields.index(name) if name in fields else -1


def _event_problem() -> str | None:
    """Why an event or field the ledger needs is missing here, or None."""
    for (category, name), needed in _EVENTS.items():
        fields = event_fields(category, name)
        if fields is None:
            return f"no tracepoint {category}:{name} here (no {tracefs.TRACEFS}/events/" \
                   f"{category}/{name}/format)"
        missing = [f for f in needed if f not in fields]
        if missing:
            return f"tracepoint {category}:{name} has no field {', '.join(missing)} here"
    node = event_fields(*_KMALLOC_NODE)
    if node is not None and not set(_EVENTS["kmem", "kmalloc"]) <= set(node):
        return "tracepoint kmem:kmalloc_node lacks call_site, ptr or bytes_alloc here"
    return None


def unavailable_reason() -> str | None:
    """Why the ledger cannot run here, or None: each need probed in turn."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC's Python module (python3-bpfcc) is not installed"
    if os.geteuid() != 0:
        return "the ledger needs root (BPF programs on tracepoints, /proc/vmallocinfo)"
    try:
        tracefs.ensure_tracefs()
    except EnvironmentProblem as e:
        return f"no tracefs: {e}"
    problem = _event_problem()
    if problem:
        return problem
    try:
        with open(VMALLOCINFO) as f:
            f.readline()
    except OSError as e:
        return f"cannot read {VMALLOCINFO}: {os.strerror(e.errno or 0)}"
    return None


def cflags(pid: int, live_entries: int = LIVE_ENTRIES) -> list[str]:
    """The -D defines for bpf/ledger.c on this kernel (its events' layouts)."""
    from pybpfmap.stress.reentry import syscall_nr

    kmalloc = event_fields("kmem", "kmalloc") or []
    pcpu = event_fields("percpu", "percpu_alloc_percpu") or []
    flags = [
        f"-DTGID={pid}", f"-DNR_BPF={syscall_nr('bpf')}", f"-DNCPUS={bpfsys.possible_cpus()}",
        f"-DLIVE_ENTRIES={live_entries}", f"-DSITE_ENTRIES={SITE_ENTRIES}",
        f"-DTHREAD_ENTRIES={THREAD_ENTRIES}",
        f"-DKMALLOC_SITE={_arg(kmalloc, 'call_site')}", f"-DKMALLOC_PTR={_arg(kmalloc, 'ptr')}",
        f"-DKMALLOC_BYTES={_arg(kmalloc, 'bytes_alloc')}",
        f"-DKFREE_PTR={_arg(event_fields('kmem', 'kfree') or [], 'ptr')}",
        f"-DPCPU_SITE={_arg(pcpu, 'call_site')}", f"-DPCPU_SIZE={_arg(pcpu, 'size')}",
        f"-DPCPU_PTR={_arg(pcpu, 'ptr')}", f"-DPCPU_BYTES={_arg(pcpu, 'bytes_alloc')}",
        f"-DPCPU_FREE_PTR={_arg(event_fields('percpu', 'percpu_free_percpu') or [], 'ptr')}",
    ]
    node = event_fields(*_KMALLOC_NODE)
    if node is not None:
        flags += ["-DHAVE_KMALLOC_NODE", f"-DKMALLOC_NODE_SITE={_arg(node, 'call_site')}",
                  f"-DKMALLOC_NODE_PTR={_arg(node, 'ptr')}",
                  f"-DKMALLOC_NODE_BYTES={_arg(node, 'bytes_alloc')}"]
    return flags


def _area_lines() -> Counter[str]:
    """The /proc/vmallocinfo lines of BPF map areas (a multiset: with
    kptr_restrict the addresses may all read as zero)."""
    out: Counter[str] = Counter()
    with open(VMALLOCINFO) as f:
        for line in f:
            parts = line.split()
            if len(parts) > 3 and parts[2].split("+", 1)[0] in MAP_AREA_CALLERS:
                out[line.strip()] += 1
    return out


def _area_bytes(line: str) -> int:
    """Memory behind one vmallocinfo line: its pages, not its size column
    (that one includes the guard page)."""
    pages = next((int(p[6:]) for p in line.split() if p.startswith("pages=")), 0)
    return pages * os.sysconf("SC_PAGE_SIZE")


class Site(NamedTuple):
    """Live bytes of one allocation call site."""

    where: str    # symbol+offset (BCC's ksym), or what stands for an unknown site
    bytes: int
    count: int


@dataclass(frozen=True)
class Reading:
    """What the followed process's bpf(2) calls hold now, in bytes."""

    kmalloc: int
    percpu: int
    vmalloc: int          # new BPF map areas since the ledger started (any process)
    peak: int             # the ledger's running peak of kmalloc + percpu, + vmalloc now
    sites: list[Site]     # the largest call sites by live bytes
    dropped: int = 0      # allocations not remembered (table full): figures too low
    lost_calls: int = 0   # bpf(2) calls not followed (thread table full)
    missed: int | None = None  # ledger runs the kernel skipped (recursion_misses, 5.12+)

    @property
    def total(self) -> int:
        return self.kmalloc + self.percpu + self.vmalloc

    @property
    def complete(self) -> bool:
        """False when the ledger could not record everything it saw."""
        return not self.dropped and not self.lost_calls and not self.missed


class Ledger:
    """A loaded bpf/ledger.c following one process; made by :func:`recording`."""

    def __init__(self, bpf: BPF, pid: int):
        self.bpf = bpf
        self.pid = pid
        self._stats = bpf[b"stats"]
        self._areas_at_start = _area_lines()

    def _stat(self, idx: int) -> int:
        return ctypes.c_int64(self._stats[idx].value).value

    def _set(self, idx: int, value: int) -> None:
        self._stats[idx] = ctypes.c_uint64(value & (1 << 64) - 1)

    def arm(self) -> None:
        """Start following bpf(2) calls (loading the ledger made some too)."""
        self._set(_ARMED, 1)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Follow nothing while inside (loading a program beside the map): its
        bpf(2) calls and the map areas they made are not the map's."""
        areas = _area_lines()
        self._set(_ARMED, 0)
        try:
            yield
        finally:
            self._set(_ARMED, 1)
            self._areas_at_start += _area_lines() - areas

    def vmalloc(self) -> int:
        new = _area_lines() - self._areas_at_start
        return sum(_area_bytes(line) * n for line, n in new.items())

    def _site_name(self, addr: int) -> str:
        if addr == 0:
            return "percpu_alloc_percpu (no call_site before 6.0)"
        return self.bpf.ksym(addr, show_offset=True).decode(errors="replace")

    def sites(self, top: int = SITES_SHOWN) -> list[Site]:
        """The ``top`` call sites holding the most live bytes."""
        rows = []
        for k, v in self.bpf[b"sites"].items():
            live = ctypes.c_int64(v.bytes).value
            if live > 0:
                rows.append((live, ctypes.c_int64(v.count).value, k.value))
        rows.sort(reverse=True)
        return [Site(self._site_name(addr), live, count) for live, count, addr in rows[:top]]

    def missed(self) -> int | None:
        """Runs of the ledger's programs the kernel skipped (a program firing
        inside itself, 6.1+), or None where the kernel does not count them."""
        total, counted = 0, False
        for func in self.bpf.funcs.values():
            info, known = bpfsys.prog_info(func.fd)
            total += info.recursion_misses
            counted = counted or known
        return total if counted else None

    def reading(self, top: int = SITES_SHOWN) -> Reading:
        vmalloc = self.vmalloc()
        return Reading(self._stat(_KMALLOC), self._stat(_PERCPU), vmalloc,
                       self._stat(_PEAK) + vmalloc, self.sites(top),
                       self._stat(_DROPPED), self._stat(_LOST_CALLS), self.missed())

    def live(self) -> int:
        """kmalloc + percpu + vmalloc bytes held now."""
        return self._stat(_KMALLOC) + self._stat(_PERCPU) + self.vmalloc()

    def settle(self, timeout: float = 30.0, quiet: float = 1.0, step: float = 0.05) -> bool:
        """Wait until the live bytes stop changing (RCU-deferred frees after
        deletes, the deferred free of a closed map): the same in every
        reading, ``step`` s apart, for ``quiet`` s.  False if they still
        changed at ``timeout``.  Frees come in waves, one per grace period
        (on 6.1+ an RCU tasks trace one, often near a second): a shorter
        ``quiet`` can end between two waves."""
        last: list[tuple[int, float]] = []

        def steady() -> bool:
            now, live = time.monotonic(), self.live()
            if not last or last[0][0] != live:
                last[:] = [(live, now)]
            return now - last[0][1] >= quiet

        return bool(wait_until(steady, timeout, step))

    def reset_peak(self) -> None:
        """Start the running peak again from the live bytes now."""
        self._set(_PEAK, self._stat(_KMALLOC) + self._stat(_PERCPU))


@contextmanager
def recording(pid: int | None = None, *, live_entries: int = LIVE_ENTRIES) -> Iterator[Ledger]:
    """Follow process ``pid`` (default: this one) while inside: bpf/ledger.c
    loaded with pybpfmap's loader, detached and unloaded on exit and Ctrl-C.
    :class:`EnvironmentProblem` with :func:`unavailable_reason` if it cannot run."""
    pid = pid or os.getpid()
    if not os.path.isdir(f"/proc/{pid}"):
        raise UsageError("pid", f"no process {pid}")
    reason = unavailable_reason()
    if reason:
        raise EnvironmentProblem("ledger", reason)
    with bcc_program("ledger.c", cflags=cflags(pid, live_entries)) as bpf:
        ledger = Ledger(bpf, pid)
        ledger.arm()
        yield ledger

