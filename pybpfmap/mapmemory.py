"""What one map costs in kernel memory, from the kernel's own records, on every era.

:func:`metered` creates a map and hands back a :class:`Meter` that reads its
memory since just before its creation, by one of two methods:

- **memory cgroup** (kernels that charge BPF maps to it, probed by
  :func:`pybpfmap.memcg.charges_maps`; since :data:`pybpfmap.commits.MEMCG`):
  the map is created by this process sitting in a fresh child cgroup, which
  it leaves at once; the map's later allocations (the elements of a
  BPF_F_NO_PREALLOC map) stay charged to that cgroup, which then holds the
  map and nothing else.  Figures: the cgroup's kernel memory with its percpu
  and slab parts; peak: its high-water mark (``memory.peak``, all of the
  cgroup's memory, since it was made).  ``limit`` sets ``memory.max`` before
  the map is created: what the map may allocate in its whole life.
- **allocation ledger** (kernels that do not: before 5.11): the kmalloc, percpu
  and vmalloc allocations this process's bpf(2) calls made and that are still
  live (:mod:`pybpfmap.ledger`); peak: the ledger's own high-water mark.

Both exclude this process's user memory.  Each :class:`Reading` says which
method made it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pybpfmap import commits, memcg
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.maps import BpfMap, MapSpec

METHODS = ("auto", "memcg", "ledger")
SETTLE_SECONDS = 5.0  # for RCU-deferred frees to show after deletes


@dataclass
class Reading:
    """A map's kernel memory at one moment, in bytes (None: not known by this method)."""

    total: int | None
    percpu: int | None = None
    slab: int | None = None       # memcg: slab; ledger: kmalloc
    vmalloc: int | None = None    # ledger only
    peak: int | None = None       # the high-water mark since before the map was created


class Meter:
    """Reads one map's memory; made by :func:`metered`."""

    method = ""
    create_ms: float | None = None   # how long BPF_MAP_CREATE took

    def reading(self, settle: bool = False) -> Reading:
        """The map's memory now; with ``settle``, after RCU-deferred frees show."""
        raise NotImplementedError

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Count nothing this process does inside (loading programs beside the map)."""
        yield


class Unmetered(Meter):
    """No method works here; ``method`` says why."""

    def __init__(self, why: str):
        self.method = f"unavailable: {why}"

    def reading(self, settle: bool = False) -> Reading:
        return Reading(None)


class CgroupMeter(Meter):
    def __init__(self, cg: memcg.Cgroup, base: memcg.Sample):
        self.cg, self.base = cg, base
        self.method = f"memory cgroup v{cg.version}"

    def reading(self, settle: bool = False) -> Reading:
        now = self.cg.sample()
        if settle:
            now = _settled(self.cg.sample, lambda s: s.current) or now

        def d(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a - b

        total = d(now.current, self.base.current)
        peak = d(now.peak, self.base.charged)
        if peak is not None and total is not None:
            # The counters are charged in batches (MEMCG_CHARGE_BATCH pages per CPU), and
            # the high-water mark counts all of the cgroup: never below what was read.
            peak = max(peak, total)
        return Reading(total, d(now.percpu, self.base.percpu), d(now.slab, self.base.slab),
                       None, peak)

    def events(self) -> dict[str, int]:
        return self.cg.events()


class LedgerMeter(Meter):
    def __init__(self, book):
        from pybpfmap import ledger

        self.book = book
        self.method = ledger.METHOD

    def reading(self, settle: bool = False) -> Reading:
        if settle:
            self.book.settle(SETTLE_SECONDS)
        r = self.book.reading()
        return Reading(r.total, r.percpu, r.kmalloc, r.vmalloc, r.peak)

    def paused(self):
        return self.book.paused()


def _settled(sample, value, polls: int = 4):
    """Sample until ``value(sample())`` stops changing (RCU-deferred frees), or a
    few seconds pass; the last sample."""
    from pybpfmap import procs

    seen: list = []

    def stable() -> bool:
        seen.append(sample())
        tail = [value(s) for s in seen[-polls:]]
        return len(tail) == polls and len(set(tail)) == 1

    procs.wait_until(stable, SETTLE_SECONDS, step=0.05)
    return seen[-1] if seen else None


def choose(method: str) -> tuple[str, str | None]:
    """The method ``method`` resolves to here ("memcg" or "ledger"), or why none
    works (then the first is "")."""
    if method not in METHODS:
        raise UsageError("--memory-method", f"{method!r}: choose from {', '.join(METHODS)}")
    # (charges_maps is probed once per process: ask first whether a cgroup can be made now)
    charged = None if memcg.unavailable_reason() else memcg.charges_maps()
    if method in ("auto", "memcg") and charged:
        return "memcg", None
    if method == "memcg":
        why = memcg.unavailable_reason() or (
            "this kernel does not charge BPF maps to the memory cgroup (probed; charged "
            f"since {commits.MEMCG.cite()})")
        return "", why
    from pybpfmap import ledger

    why = ledger.unavailable_reason()
    return ("", why) if why else ("ledger", None)


@contextlib.contextmanager
def metered(spec: MapSpec, method: str = "auto",
            limit: int | None = None) -> Iterator[tuple[BpfMap, Meter]]:
    """``spec`` created, with a meter of its memory; the map is closed on exit.
    A refusal to create it raises the explained KernelError (maps.MapSpec.create).
    ``limit``: the memory cgroup's ``memory.max`` for the map (memcg method only)."""
    chosen, why = choose(method)
    if limit is not None and chosen != "memcg":
        raise UsageError("--memory-max", "needs a kernel that charges BPF maps to the "
                         f"memory cgroup: {why or 'this one does not (probed)'}")
    if chosen == "memcg":
        with memcg.measuring() as cg:
            if cg is None:
                raise EnvironmentProblem("memory cgroup", "could not make a child cgroup")
            if limit is not None:
                cg.set_max(limit)
            base = cg.sample()
            bmap, ms = _created(spec)
            try:
                _step_out(cg)
                meter = CgroupMeter(cg, base)
                meter.create_ms = ms
                yield bmap, meter
            finally:
                bmap.close()
        return
    if chosen == "ledger":
        from pybpfmap import ledger

        with ledger.recording() as book:
            bmap, ms = _created(spec)
            with bmap:
                meter = LedgerMeter(book)
                meter.create_ms = ms
                yield bmap, meter
        return
    bmap, ms = _created(spec)
    with bmap:
        meter = Unmetered(why or "no method")
        meter.create_ms = ms
        yield bmap, meter


def _created(spec: MapSpec) -> tuple[BpfMap, float]:
    """``spec`` created, and how long BPF_MAP_CREATE took (ms)."""
    start = time.perf_counter()
    bmap = spec.create()
    return bmap, round((time.perf_counter() - start) * 1000, 3)


def _step_out(cg: memcg.Cgroup) -> None:
    """Move this process back to the cgroup's parent, leaving the map behind:
    its memory stays charged to ``cg``, which lives until the map is closed."""
    try:
        (cg.path.parent / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as e:
        raise EnvironmentProblem("memory cgroup", f"could not leave {cg.path}: {e}") from None
