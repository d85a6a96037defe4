"""What a hash map costs, from the kernel's own records: its map_flags, the
memory it is charged when empty, filled to max_entries and after every element
was deleted, its creation time, and what a new key does to a full map (E2BIG,
or an eviction for LRU maps).

Memory comes from the memory cgroup the map was created in (``memory.current``
of a fresh child cgroup, with ``memory.stat``'s percpu and slab split), beside
fdinfo ``memlock`` (:func:`pybpfmap.maps.memlock_is_usage` says when that is
not usage).  ``pybpfmap maps`` prints these records; the report renders them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pybpfmap import bpfsys, commits, memcg
from pybpfmap.errors import KernelError, errno_name
from pybpfmap.maps import MapSpec, alloc_label, memlock_is_usage
from pybpfmap.output import human_bytes, md_table, text_table
from pybpfmap.records import from_json

MEMLOCK_NOTE = ("memlock is the kernel's fdinfo figure; it reports real usage for "
                f"non-preallocated maps since {commits.MEMORY_USAGE.cite()}, an estimate from "
                "max_entries in 5.11-6.3, and before 5.11 the RLIMIT_MEMLOCK charge "
                "computed from max_entries, the same for both modes")
STAGES = ("empty", "full", "drained")


@dataclass
class Memory:
    """What a map costs at one stage, in bytes, by each source."""

    memlock: int                 # fdinfo memlock
    memcg: int | None            # memory cgroup charge since before the map was created
    memcg_percpu: int | None
    memcg_slab: int | None
    system_slab: int             # /proc/meminfo deltas: system-wide, anything moves them
    system_percpu: int
    system_vmalloc: int = 0

    @property
    def system(self) -> int:
        """The system-wide stand-in: Slab + Percpu + VmallocUsed deltas."""
        return self.system_slab + self.system_percpu + self.system_vmalloc

    @property
    def real(self) -> int | None:
        """The best figure of what the map uses: the memory cgroup's charge."""
        return self.memcg


@dataclass
class MapRecord:
    """One map kind: its flags and memory as the kernel reports them."""

    type: str
    prealloc: bool
    max_entries: int
    key_size: int
    value_size: int
    kernel_release: str
    where: str
    skipped: str | None = None
    map_flags: int | None = None
    create_ms: float | None = None
    entries_full: int | None = None
    new_key_when_full: str | None = None
    memory: dict[str, Memory] = field(default_factory=dict)   # stage -> figures
    memlock_is_estimate: bool = False
    memcg: str = ""          # where the memcg figures come from, or why there are none

    @property
    def label(self) -> str:
        return MapSpec(self.type, self.prealloc).label


def measure(spec: MapSpec, where: str, release: str) -> MapRecord:
    """Create, fill, drain one map in its own memory cgroup; every figure from the kernel."""
    rec = MapRecord(spec.type, spec.prealloc, spec.max_entries, spec.key_size,
                    spec.value_size, release, where)
    memcg.charges_maps()  # probed (once) before this process moves into the child
    with memcg.measuring() as cg:
        before = cg.sample() if cg else None
        start = time.perf_counter()
        with spec.create() as m:
            rec.create_ms = round((time.perf_counter() - start) * 1000, 3)
            rec.map_flags = m.kernel_view()["map_flags"]

            def stage(name: str) -> None:
                usage = cg.sample().minus(before) if cg and before else None
                rec.memory[name] = Memory(m.memlock(), *(
                    (usage.memcg, usage.memcg_percpu, usage.memcg_slab, usage.system_slab,
                     usage.system_percpu, usage.system_vmalloc) if usage
                    else (None, None, None, 0, 0, 0)))

            stage("empty")
            rec.memlock_is_estimate = not memlock_is_usage(rec.memory["empty"].memlock, spec)
            m.fill(spec.max_entries)
            stage("full")
            rec.entries_full = len(m.keys())
            try:
                m.update(spec.max_entries, 0, bpfsys.NOEXIST)
                rec.new_key_when_full = "evicted" if spec.lru else "accepted"
            except KernelError as e:
                rec.new_key_when_full = errno_name(e.err) if e.err else str(e)
            m.drain()
            stage("drained")
        rec.memcg = memcg_source(cg, rec)
    return rec


def memcg_source(cg: memcg.Cgroup | None, rec: MapRecord) -> str:
    """Where the memory cgroup figures come from, or why there are none (then
    the memcg fields are None)."""
    why = None
    if cg is None or rec.memory["empty"].memcg is None:
        why = memcg.unavailable_reason() or "could not make a child memory cgroup"
    elif memcg.charges_maps() is False:
        why = (f"this kernel does not charge BPF maps to the memory cgroup (probed; "
               f"charged since {commits.MEMCG.cite()}): see the system-wide /proc/meminfo "
               "Slab + Percpu + VmallocUsed deltas")
    if why:
        for m in rec.memory.values():
            m.memcg = m.memcg_percpu = m.memcg_slab = None
        return f"unavailable: {why}"
    return f"cgroup v{cg.version}"


def skipped(spec: MapSpec, reason: str, where: str, release: str) -> MapRecord:
    return MapRecord(spec.type, spec.prealloc, spec.max_entries, spec.key_size,
                     spec.value_size, release, where, skipped=reason)


def load(data: list) -> list[MapRecord]:
    return [from_json(MapRecord, r) for r in data]


def _mem(r: MapRecord, stage: str, real: bool) -> int | None:
    m = r.memory.get(stage)
    if m is None:
        return None
    return m.real if real else m.memlock


def render_text(records: list[MapRecord]) -> str:
    """The human table: one row per map, memory from the memory cgroup and memlock."""
    rows = []
    for r in records:
        alloc = alloc_label(r.prealloc)
        if r.skipped:
            rows.append([r.where, r.type, alloc, None, None, None, None, None, None, None,
                         f"skipped: {r.skipped}"])
            continue
        est = "~" if r.memlock_is_estimate else ""
        rows.append([r.where, r.type, alloc, f"{r.map_flags:#x}", r.create_ms,
                     *(human_bytes(_mem(r, s, True)) for s in STAGES),
                     est + (human_bytes(_mem(r, "full", False)) or ""), r.entries_full,
                     r.new_key_when_full])
    out = text_table(["where", "type", "alloc", "map_flags", "create ms", "memcg empty",
                      "memcg full", "memcg drained", "memlock full", "entries",
                      "new key when full"], rows)
    return out + "\n" + notes(records)


def notes(records: list[MapRecord]) -> str:
    lines = [f"{MEMLOCK_NOTE}."]
    sources = sorted({f"{r.where}: {r.memcg}" for r in records if not r.skipped})
    lines += [f"memory cgroup figures ({s})" for s in sources]
    if any(r.memlock_is_estimate for r in records):
        lines.append("~ = fdinfo memlock does not show what a map uses on this kernel: before "
                     "5.11 it is the RLIMIT_MEMLOCK charge from max_entries (the same with "
                     "and without NO_PREALLOC), in 5.11-6.3 that estimate.")
    return "\n".join(lines) + "\n"


def render_markdown(records: list[MapRecord]) -> str:
    rows = []
    for r in records:
        alloc = alloc_label(r.prealloc)
        if r.skipped:
            rows.append([r.type, alloc, r.max_entries, None, None, None, None, None, None,
                         f"skipped: {r.skipped}"])
            continue
        est = " (estimate)" if r.memlock_is_estimate else ""
        rows.append([r.type, alloc, r.max_entries, f"{r.map_flags:#x}", r.create_ms,
                     *(mib(_mem(r, s, True)) for s in STAGES),
                     f"{mib(_mem(r, 'full', False))}{est}", r.new_key_when_full])
    return md_table(["type", "alloc", "max_entries", "map_flags", "create ms",
                     "memcg MiB empty", "memcg MiB full", "memcg MiB drained",
                     "memlock MiB full", "new key when full"], rows) + "\n" + notes(records)


def mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 3)


