"""One map under test: made with a meter of its memory, and what it cost.

Each map is created by pybpfmap with bpf(2) under :func:`pybpfmap.mapmemory.metered`
(its own memory cgroup where the kernel charges maps to one, else the
allocation ledger).  Its memory is read at three stages (empty, after the
--fill, after the runs), with its peak, beside fdinfo memlock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pybpfmap import era, kfacts, mapmemory
from pybpfmap.bench.program import Bench
from pybpfmap.bench.record import Memory, Mode
from pybpfmap.maps import BpfMap, MapSpec


@dataclass
class Subject:
    """One map under test and everything measured on it."""

    spec: MapSpec                         # as created
    asked: int                            # max_entries as asked
    fill: int
    resident: int
    bmap: BpfMap
    meter: mapmemory.Meter
    bench: Bench | None = None
    stages: dict[str, mapmemory.Reading] = field(default_factory=dict)
    memlock: dict[str, int] = field(default_factory=dict)
    repeat: int = 0                       # inkernel: test_run repeats of the triple program
    empty_repeat: int = 0                 # ... and of the empty one (calibrated)
    # mode -> CPU count -> one sample per run, in the mode's own form
    runs: dict[Mode, dict[int, list[Any]]] = field(default_factory=dict)

    def stage(self, name: str) -> None:
        """Memory at one stage: the meter's reading and fdinfo memlock."""
        self.stages[name] = self.meter.reading(settle=name == "after")
        self.memlock[name] = self.bmap.memlock()

    def memory(self, release: str) -> Memory:
        """What the map cost at each stage, as a record says it."""
        mem = Memory(self.memlock["empty"], self.memlock["full"], self.memlock["after"],
                     memlock_is_estimate=not era.memlock_is_real(kfacts.for_release(release)),
                     method=self.meter.method)
        empty, full, after = (self.stages.get(k) for k in ("empty", "full", "after"))
        mem.kernel_empty = empty.total if empty else None
        mem.kernel_full = full.total if full else None
        if after:
            mem.kernel_after, mem.percpu_after, mem.slab_after = \
                after.total, after.percpu, after.slab
            mem.peak = after.peak
        return mem


@contextlib.contextmanager
def made(spec: MapSpec) -> Iterator[tuple[BpfMap, mapmemory.Meter]]:
    """``spec`` created with bpf(2) under a meter of its memory; closed on exit."""
    with mapmemory.metered(spec) as made_:
        yield made_
