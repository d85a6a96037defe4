"""What a hash map costs, from the kernel's own records: its map_flags, the
memory it is charged when empty, filled to max_entries and after every element
was deleted, its creation time, and what a new key does to a full map (E2BIG,
or an eviction for LRU maps).

Kernel memory comes from :mod:`pybpfmap.mapmemory` (the map's own memory
cgroup where the kernel charges maps to it, else the allocation ledger), with
its peak, beside fdinfo ``memlock`` (:func:`pybpfmap.maps.memlock_is_usage`
says when that is not usage).  ``pybpfmap maps`` prints these records; the
report renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pybpfmap import bpfsys, commits, mapmemory
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
    """What a map costs at one stage, in bytes: fdinfo memlock, and the kernel
    memory the record's method read (None: not known by it)."""

    memlock: int
    kernel: int | None             # the map's kernel memory: memory cgroup or ledger
    percpu: int | None = None
    slab: int | None = None        # memory cgroup: slab; ledger: kmalloc
    vmalloc: int | None = None     # ledger only
    peak: int | None = None        # high-water mark from before creation to this stage


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
    method: str = ""         # how the kernel memory was read (mapmemory), or why it was not

    @property
    def label(self) -> str:
        return MapSpec(self.type, self.prealloc).label


def measure(spec: MapSpec, where: str, release: str, method: str = "auto") -> MapRecord:
    """Create, fill, drain one map; every figure from the kernel (:mod:`pybpfmap.mapmemory`)."""
    rec = MapRecord(spec.type, spec.prealloc, spec.max_entries, spec.key_size,
                    spec.value_size, release, where)
    with mapmemory.metered(spec, method) as (m, meter):
        rec.create_ms = meter.create_ms
        rec.map_flags = m.kernel_view()["map_flags"]
        rec.method = meter.method

        def stage(name: str, settle: bool = False) -> None:
            r = meter.reading(settle)
            rec.memory[name] = Memory(m.memlock(), r.total, r.percpu, r.slab, r.vmalloc,
                                      r.peak)

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
        stage("drained", settle=True)
    return rec


def skipped(spec: MapSpec, reason: str, where: str, release: str) -> MapRecord:
    return MapRecord(spec.type, spec.prealloc, spec.max_entries, spec.key_size,
                     spec.value_size, release, where, skipped=reason)


def load(data: list) -> list[MapRecord]:
    return [from_json(MapRecord, r) for r in data]


def _mem(r: MapRecord, stage: str, real: bool = True) -> int | None:
    m = r.memory.get(stage)
    if m is None:
        return None
    return m.kernel if real else m.memlock


def _peak(r: MapRecord) -> int | None:
    m = r.memory.get(STAGES[-1])
    return m.peak if m else None


def render_text(records: list[MapRecord]) -> str:
    """The human table: one row per map, its kernel memory by stage, peak and memlock."""
    rows = []
    for r in records:
        alloc = alloc_label(r.prealloc)
        if r.skipped:
            rows.append([r.where, r.type, alloc, None, None, None, None, None, None, None,
                         None, f"skipped: {r.skipped}"])
            continue
        est = "~" if r.memlock_is_estimate else ""
        rows.append([r.where, r.type, alloc, f"{r.map_flags:#x}", r.create_ms,
                     *(human_bytes(_mem(r, s)) for s in STAGES), human_bytes(_peak(r)),
                     est + (human_bytes(_mem(r, "full", False)) or ""), r.entries_full,
                     r.new_key_when_full])
    out = text_table(["where", "type", "alloc", "map_flags", "create ms", "empty",
                      "full", "drained", "peak", "memlock full", "entries",
                      "new key when full"], rows)
    return out + "\n" + notes(records)


def notes(records: list[MapRecord]) -> str:
    lines = ["empty/full/drained/peak: the map's kernel memory since just before it was "
             "created (peak: the high-water mark up to the drain)", f"{MEMLOCK_NOTE}."]
    sources = sorted({f"{r.where}: {r.method}" for r in records if not r.skipped})
    lines += [f"kernel memory read by {s}" for s in sources]
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
                         None, f"skipped: {r.skipped}"])
            continue
        est = " (estimate)" if r.memlock_is_estimate else ""
        rows.append([r.type, alloc, r.max_entries, f"{r.map_flags:#x}", r.create_ms,
                     *(mib(_mem(r, s)) for s in STAGES), mib(_peak(r)),
                     f"{mib(_mem(r, 'full', False))}{est}", r.new_key_when_full])
    return md_table(["type", "alloc", "max_entries", "map_flags", "create ms",
                     "MiB empty", "MiB full", "MiB drained", "MiB peak",
                     "memlock MiB full", "new key when full"], rows) + "\n" + notes(records)


def mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 3)


