"""One map under test: made in a memory cgroup of its own, and what it cost.

Each map is created by pybpfmap with bpf(2) inside its own child memory
cgroup; the process steps out again at once, and the map's later
allocations are charged to the cgroup it was created in.  Its memory is
sampled at three stages (empty, after the --fill, after the runs) by the
cgroup's charge and by fdinfo memlock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pybpfmap import commits, era, kfacts, memcg
from pybpfmap.bench.program import Bench
from pybpfmap.bench.record import Memory, Mode
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.maps import BpfMap, MapSpec


@dataclass
class Subject:
    """One map under test and everything measured on it."""

    spec: MapSpec                         # as created
    asked: int                            # max_entries as asked
    fill: int
    resident: int
    bmap: BpfMap
    cg: memcg.Cgroup | None
    base: memcg.Sample | None
    bench: Bench | None = None
    stages: dict[str, memcg.Sample | None] = field(default_factory=dict)
    memlock: dict[str, int] = field(default_factory=dict)
    repeat: int = 0                       # inkernel: test_run repeats of the triple program
    empty_repeat: int = 0                 # ... and of the empty one (calibrated)
    # mode -> CPU count -> one sample per run, in the mode's own form
    runs: dict[Mode, dict[int, list[Any]]] = field(default_factory=dict)

    def stage(self, name: str) -> None:
        """Memory at one stage: the cgroup's charge and fdinfo memlock."""
        self.stages[name] = self.cg.sample() if self.cg else None
        self.memlock[name] = self.bmap.memlock()

    def memory(self, release: str) -> Memory:
        """What the map cost at each stage, as a record says it."""
        mem = Memory(self.memlock["empty"], self.memlock["full"], self.memlock["after"],
                     memlock_is_estimate=not era.memlock_is_real(kfacts.for_release(release)))
        why = None
        if self.cg is None or self.base is None or self.base.current is None:
            why = memcg.unavailable_reason() or "could not make a child memory cgroup"
        elif memcg.charges_maps() is False:
            why = (f"this kernel does not charge BPF maps to the memory cgroup (probed; "
                   f"charged since {commits.MEMCG.cite()})")
        if why:
            mem.memcg = f"unavailable: {why}"
            return mem

        def d(stage: str, attr: str = "current") -> int | None:
            now, base = self.stages.get(stage), self.base
            a, b = getattr(now, attr, None), getattr(base, attr, None)
            return None if a is None or b is None else a - b

        mem.memcg_empty, mem.memcg_full, mem.memcg_after = d("empty"), d("full"), d("after")
        mem.memcg_percpu_after, mem.memcg_slab_after = d("after", "percpu"), d("after", "slab")
        mem.memcg = f"cgroup v{self.cg.version}"
        return mem


def _step_out(cg: memcg.Cgroup) -> None:
    """Move this process back to the cgroup's parent, leaving the map behind:
    its memory stays charged to ``cg``, which the caller keeps alive."""
    try:
        (cg.path.parent / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as e:
        raise EnvironmentProblem("memory cgroup", f"could not leave {cg.path}: {e}") from None


@contextlib.contextmanager
def made(spec: MapSpec) -> Iterator[tuple[BpfMap, memcg.Cgroup | None, memcg.Sample | None]]:
    """``spec`` created with bpf(2) in a child memory cgroup of its own (None
    when none can be made); the cgroup lives until the map is closed."""
    with memcg.measuring() as cg:
        base = cg.sample() if cg else None
        bmap = spec.create()
        try:
            if cg is not None:
                _step_out(cg)
            yield bmap, cg, base
        finally:
            bmap.close()
