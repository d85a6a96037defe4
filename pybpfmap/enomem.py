"""Where a hash map runs out of memory: filled from a tracing program, with or
without a memory limit, and by one batch update from user space.

The seed commit (:data:`pybpfmap.commits.PREALLOC`) argues for preallocation
with memory as much as with the deadlock: a preallocated map is charged its
whole size at creation, so it fails there if at all; a BPF_F_NO_PREALLOC map
allocates each new element in the program's atomic context, where "alloc_percpu(GFP_ATOMIC)
... often fails to allocate memory even when 90% of it is free".  For every
map kind :func:`measure` inserts ``updates`` new keys from a raw tracepoint
program run with BPF_PROG_TEST_RUN on each CPU (:mod:`pybpfmap.tracefill`)
and counts each errno, beside free memory and the kernel's own count of
failed per-CPU allocations; with ``memory_max`` the map is created in a memory
cgroup with that ``memory.max`` (:mod:`pybpfmap.mapmemory`), where a
preallocated map fails at creation and a NO_PREALLOC one when it grows.  A
second, fresh map of the same kind under the same limit gets the same keys in
one ``BPF_MAP_UPDATE_BATCH`` from user space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pybpfmap import mapmemory, tracefill
from pybpfmap.errors import EnvironmentProblem, KernelError, errno_name
from pybpfmap.maps import MapSpec, alloc_label
from pybpfmap.output import human_bytes, md_table, text_table
from pybpfmap.records import from_json

AUTO = "auto"  # --memory-max auto: half of what the preallocated map costs here


@dataclass
class FillRecord:
    """One map kind filled from a tracing program (and by one batch update)."""

    type: str
    prealloc: bool
    max_entries: int
    key_size: int
    value_size: int
    kernel_release: str
    where: str
    updates: int                         # new keys asked for, over all CPUs
    cpus: list[int] = field(default_factory=list)
    memory_max: int | None = None        # memory.max of the map's cgroup (None: no limit)
    skipped: str | None = None
    create_error: str | None = None      # "ENOMEM (12): ..." when creation failed
    fill: tracefill.FillResult | None = None
    batch: tracefill.BatchResult | None = None
    batch_create_error: str | None = None
    kernel_full: int | None = None       # the map's kernel memory after the fill
    peak: int | None = None
    method: str = ""                     # how that memory was read (mapmemory)
    cgroup_events: dict[str, int] = field(default_factory=dict)  # memory.events after

    @property
    def label(self) -> str:
        return f"{self.type}/{alloc_label(self.prealloc)}"


def auto_limit(spec: MapSpec) -> int:
    """Half of the kernel memory the preallocated map of ``spec`` costs here
    (measured): it cannot be created under it, a NO_PREALLOC map runs out
    filling it."""
    pre = MapSpec(spec.type, True, spec.key_size, spec.value_size, spec.max_entries,
                  spec.extra_flags)
    with mapmemory.metered(pre, "memcg") as (_, meter):
        total = meter.reading().total
    if not total:
        raise EnvironmentProblem("--memory-max", "auto: the preallocated map's memory could "
                                 "not be read here; give a number of bytes")
    return total // 2


def measure(spec: MapSpec, updates: int, cpus: list[int], where: str, release: str,
            memory_max: int | None = None) -> FillRecord:
    rec = FillRecord(spec.type, spec.prealloc, spec.max_entries, spec.key_size,
                     spec.value_size, release, where, updates, list(cpus), memory_max)
    created = False
    try:
        with mapmemory.metered(spec, limit=memory_max) as (m, meter):
            created = True
            rec.method = meter.method
            rec.fill = tracefill.fill(m, updates, cpus)
            r = meter.reading()
            rec.kernel_full, rec.peak = r.total, r.peak
            if isinstance(meter, mapmemory.CgroupMeter):
                rec.cgroup_events = meter.events()
    except KernelError as e:
        if created:
            raise
        rec.create_error = _said(e)
    try:
        with mapmemory.metered(spec, limit=memory_max) as (m, _):
            rec.batch = tracefill.batch_insert(m, min(updates, spec.max_entries))
    except KernelError as e:
        rec.batch_create_error = _said(e)
    return rec


def _said(e: KernelError) -> str:
    return f"{errno_name(e.err)}: {e.meaning}" if e.err else e.meaning


def skipped(spec: MapSpec, updates: int, reason: str, where: str, release: str,
            memory_max: int | None = None) -> FillRecord:
    return FillRecord(spec.type, spec.prealloc, spec.max_entries, spec.key_size,
                      spec.value_size, release, where, updates, [], memory_max,
                      skipped=reason)


def load(data: list) -> list[FillRecord]:
    return [from_json(FillRecord, r) for r in data]


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"


HEADS = ["where", "type", "alloc", "memory.max", "updates", "inserted", "errors",
         "E2BIG not full", "pcpu alloc fails", "MemFree after", "peak", "batch update"]


def render_text(records: list[FillRecord]) -> str:
    return text_table(HEADS, _rows(records)) + "\n" + notes(records)


def render_markdown(records: list[FillRecord]) -> str:
    return md_table(HEADS, _rows(records)) + "\n" + notes(records)


def _rows(records: list[FillRecord]) -> list[list]:
    rows = []
    for r in records:
        alloc = alloc_label(r.prealloc)
        if r.skipped:
            rows.append([r.where, r.type, alloc, human_bytes(r.memory_max), None, None, None,
                         None, None, None, f"skipped: {r.skipped}"])
            continue
        f = r.fill
        fill_cells = ([f.inserted, _errors(f.errors), "yes" if f.e2big_while_not_full else "",
                       f.pcpu_alloc_failures, human_bytes(f.mem_free)] if f
                      else [None, f"create: {(r.create_error or '').split(':')[0]}", None,
                            None, None])
        batch = (f"{r.batch.processed}/{r.batch.asked}"
                 + (f" {r.batch.error}" if r.batch.error else "") if r.batch
                 else f"create: {(r.batch_create_error or '').split(':')[0]}")
        rows.append([r.where, r.type, alloc, human_bytes(r.memory_max) or "none",
                     f"{r.updates} on {len(r.cpus)} CPU", *fill_cells,
                     human_bytes(r.peak), batch])
    return rows


def notes(records: list[FillRecord]) -> str:
    lines = ["updates: new keys inserted (BPF_NOEXIST) by a raw tracepoint program run with "
             "BPF_PROG_TEST_RUN on each CPU (atomic context, as a tracing program); errors by "
             "errno; pcpu alloc fails: the kernel's percpu:percpu_alloc_percpu_fail events in "
             "the meantime; E2BIG not full: E2BIG while the map held fewer than max_entries",
             "batch update: keys processed by one BPF_MAP_UPDATE_BATCH into a fresh map of the "
             "same kind under the same limit, and its errno"]
    for r in records:
        if r.create_error:
            lines.append(f"{r.where} {r.label}: creation failed: {r.create_error}")
    methods = sorted({f"{r.where}: {r.method}" for r in records if r.method})
    lines += [f"peak read by {m}" for m in methods]
    return "\n".join(lines) + "\n"


def online_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))
