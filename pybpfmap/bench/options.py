"""What one bench invocation asks for (``pybpfmap bench``'s options, checked)."""

from __future__ import annotations

from dataclasses import dataclass

from pybpfmap.bench.record import Mode
from pybpfmap.bench.triggers import Trigger


@dataclass
class Options:
    modes: tuple[Mode, ...] = tuple(Mode)
    types: tuple[str, ...] = ("hash",)
    prealloc: tuple[bool, ...] = (True, False)
    cpus: tuple[int, ...] = (1,)
    max_entries: tuple[int, ...] = (1000,)
    fills: tuple[int, ...] = (0,)         # percent of max_entries preloaded
    runs: int = 3
    seconds: float = 0.3                  # measuring window per run, CPU count and program
    warmup: float = 0.1                   # syscall: discarded window after attach
    settle: float | None = None           # quiet before each window (None: run.settle_time())
    inkernel_triples: int = 100           # triples per test_run run (resolution)
    syscall_triples: int = 1              # triples per event (map_perf_test since 6.1: 10)
    key: str = "random"
    trigger: Trigger | None = None        # syscall: None chooses (triggers.choose())
    key_size: int = 4
    value_size: int = 8
    headroom: bool = True                 # False: a full map refuses the triple's keys (tests)
    cpus_from_zero: bool = False          # CPUs 0..k-1, as map_perf_test pins its children

    @property
    def tracing_no_prealloc(self) -> bool:
        """Whether a tracing program (a triggered mode's) will use a
        BPF_F_NO_PREALLOC map: kernels 5.7 to 6.0 WARN about that once
        (:mod:`pybpfmap.bench.syscall`)."""
        return any(m.triggered for m in self.modes) and False in self.prealloc

    def steps(self) -> int:
        """Measurements to make, for the progress bar."""
        return (len(self.types) * len(self.prealloc) * len(self.max_entries) * len(self.fills)
                * self.runs * len(self.cpus) * len(self.modes))
