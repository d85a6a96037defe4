"""What ``pybpfmap bench --json`` prints: one :class:`BenchRecord` per map,
mode and CPU count.

A record says what was measured (map kind, max_entries and how full it was,
what one event does), the figures with their spread over runs, the proof
that the program ran as often as it was triggered and that its map calls
succeeded (:class:`Verification`; a record that fails it is *flagged*, never
silently faster), the memory the map cost by the memory cgroup and by fdinfo
(:class:`Memory`), map_perf_test's or the selftests' ``bench htab-mem``'s
figures beside it when asked (:class:`PeerFigure`, :class:`HtabMemPeer`),
and the machine it ran on (:class:`pybpfmap.bench.machine.Machine`).  A map
the kernel refuses (LRU with BPF_F_NO_PREALLOC: ENOTSUPP) is a record too,
with ``refused``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pybpfmap.bench.machine import Machine
from pybpfmap.bench.peer_htab_mem import HtabMemResult
from pybpfmap.records import from_json
from pybpfmap.stats import CV_WARN, summarise

CLOCK_TOLERANCE = 0.10  # the independent clock must agree within this
PEER_TOLERANCE = 0.10   # pybpfmap vs map_perf_test: the target


class _Figures(NamedTuple):
    """What the records of one :class:`Mode` hold."""

    per: str                # one program run is a test_run "run", or a syscall "event"
    unit: str               # what speed() counts per second
    clock: str              # the second clock beside the figure
    triggered: bool         # trigger processes call a syscall: bursts, a trigger loop
    headline: Callable[[BenchRecord], Spread | None]   # the runs must agree on this one
    speed: Callable[[BenchRecord], float | None]       # per CPU: what pre/no compares
    title: str


class Mode(enum.Enum):
    """How the triple was run (``--mode``), and what a record of it holds.
    A record's JSON names its mode by value.  What measures each mode is
    :mod:`pybpfmap.bench.harness`."""

    INKERNEL = "inkernel", _Figures(
        per="run", unit="triples/s", clock="bpf_stats", triggered=False,
        headline=lambda r: r.ns_per_triple, speed=lambda r: r.triples_per_sec_per_cpu,
        title="in kernel (BPF_PROG_TEST_RUN): ns per triple net of the empty program, "
              "M triples/s per CPU")
    SYSCALL = "syscall", _Figures(
        per="event", unit="events/s", clock="in program", triggered=True,
        headline=lambda r: r.events_per_sec,
        speed=lambda r: r.events_per_sec.median if r.events_per_sec else None,
        title="syscall-triggered (map_perf_test style): M events/s per CPU, whole-window "
              "mean (ns per triple net of the empty program)")

    per: str
    unit: str
    clock: str
    triggered: bool
    headline: Callable[[BenchRecord], Spread | None]
    speed: Callable[[BenchRecord], float | None]
    title: str

    def __new__(cls, value: str, figures: _Figures) -> Mode:
        mode = object.__new__(cls)
        mode._value_ = value
        (mode.per, mode.unit, mode.clock, mode.triggered, mode.headline, mode.speed,
         mode.title) = figures
        return mode

    def __str__(self) -> str:
        return self.value


@dataclass
class Spread:
    """One figure over repeated runs."""

    median: float
    min: float
    max: float
    cv: float | None    # None: one run
    values: list[float]

    @classmethod
    def of(cls, values: list[float], digits: int = 2) -> Spread:
        s = summarise(values)
        return cls(round(s.median, digits), round(s.low, digits), round(s.high, digits),
                   round(s.cv, 4) if s.runs > 1 else None,
                   [round(v, digits) for v in values])

    @property
    def noisy(self) -> bool:
        return self.cv is not None and self.cv > CV_WARN


@dataclass
class Verification:
    """Whether the program ran once per trigger and its map calls succeeded,
    summed over every run of the record (triple and empty windows)."""

    events: int                  # program runs counted by the program itself
    triggers: int                # test_run: calls x repeat; syscall: trigger calls
    difference: int              # events - triggers
    elsewhere: int               # runs on CPUs outside the run (others' getuid(): syscall)
    failures: dict[str, dict[str, int]]   # update/lookup/delete -> errno -> count
    recursion_misses: int | None          # None: not counted for this program here
    recursion_misses_note: str
    problems: list[str] = field(default_factory=list)   # why the record is flagged

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Memory:
    """What the map cost: fdinfo memlock and its kernel memory (bytes, read by
    ``method``: :mod:`pybpfmap.mapmemory`), right after creation, after the
    --fill, and after the runs; ``peak``: its high-water mark over all of it."""

    memlock_empty: int
    memlock_full: int
    memlock_after: int
    memlock_is_estimate: bool     # before v6.4 fdinfo shows an estimate from max_entries
    kernel_empty: int | None = None
    kernel_full: int | None = None
    kernel_after: int | None = None
    percpu_after: int | None = None
    slab_after: int | None = None
    peak: int | None = None
    method: str = ""              # "memory cgroup v2", the ledger, or "unavailable: why"


@dataclass
class PeerFigure:
    """The kernel's own tool on the same map kind, CPU count and max_entries,
    in the same boot."""

    tool: str                      # "map_perf_test"
    test: str                      # its test as it prints it: "hash_map_perf pre-alloc"
    events_per_sec: Spread         # per CPU (mean over CPUs), over runs
    triples_per_event: int
    ratio: float | None            # pybpfmap's events/s per CPU / the tool's
    within: bool | None            # ratio within ±10% (the target)
    build: str                     # what was built: source version, allocator
    differences: list[str]         # what pybpfmap's event does that the tool's does not


@dataclass
class HtabMemPeer:
    """The kernel selftests' ``bench htab-mem`` for the same allocation mode
    and CPU count (producers) in the same boot, one run per use case, and
    pybpfmap's record in its units: k ops/s per producer, where one op is
    ``op_batch`` map calls, and MiB."""

    build: str                          # HtabMemBuild.describe()
    op_batch: int | None                # map calls per htab-mem op (OP_BATCH)
    map_calls_per_event: int            # pybpfmap's: update, lookup, delete x triples
    pybpfmap_kops_per_producer: float | None   # pybpfmap's events/s per CPU, as htab-mem counts
    pybpfmap_memory_mib: float | None   # the map's kernel memory after the runs
    pybpfmap_peak_mib: float | None     # and its high-water mark
    runs: list[HtabMemResult]           # htab-mem, one per use case
    skipped: list[str] = field(default_factory=list)   # use cases not run, and why
    differences: list[str] = field(default_factory=list)

    def ratio(self, run: HtabMemResult) -> float | None:
        """pybpfmap's k ops/s per producer / htab-mem's, for one of its runs."""
        theirs = run.summary.kops_per_producer
        if self.pybpfmap_kops_per_producer is None or not theirs:
            return None
        return round(self.pybpfmap_kops_per_producer / theirs, 3)


@dataclass
class Refusal:
    errno: int
    errno_name: str
    param: str
    reason: str


@dataclass
class BenchRecord:
    """One map kind, mode and CPU count."""

    mode: Mode
    type: str
    prealloc: bool
    max_entries: int               # as asked: the workload axis
    cpus: int | None               # None: refused
    machine: Machine
    fill_percent: int = 0
    key_size: int = 4
    value_size: int = 8
    map_max_entries: int = 0       # as created: max_entries + room for the triple's keys
    resident_keys: int = 0         # preloaded keys (disjoint from the triple's)
    resident_after: int | None = None   # keys in the map after the runs (None: not filled)
    element_counter: str = ""
    key: str = "random"            # the triple's key: "random" (own slice per CPU) or "tid"
    triples_per_event: int = 1     # triples per program run
    trigger: str = ""              # test_run, kprobe, tracepoint or raw_tp
    trigger_loop: str = ""         # syscall: compiled, or the Python fallback (and why)
    cpu_list: list[int] = field(default_factory=list)
    smt_siblings: list[list[int]] = field(default_factory=list)
    runs: int = 0
    # the figures (ns per triple: triple program minus empty program)
    ns_per_triple: Spread | None = None            # test_run clock / trigger rates
    ns_per_triple_bpf_stats: Spread | None = None  # the independent clock (syscall mode: the
                                                   # program's own time, over the warm-ups)
    ns_per_triple_wall: Spread | None = None       # inkernel: CLOCK_MONOTONIC around test_run
    ns_per_triple_median_call: Spread | None = None  # inkernel: the median call, not the mean
    clocks_agree: bool | None = None     # inkernel: bpf_stats within ±10% of ns_per_triple
                                         # (None: no second clock, or syscall mode)
    resolution_ns: float | None = None   # inkernel: test_run's 1 ns per run, per triple
    repeat: int | None = None            # inkernel: runs per test_run call
    triple_run_ns: float | None = None   # inkernel: gross ns per program run (median)
    empty_run_ns: float | None = None
    triples_per_sec_per_cpu: float | None = None   # inkernel: 1e9 / ns_per_triple
    events_per_sec: Spread | None = None           # syscall: per CPU, whole-window mean
    events_per_sec_burst: Spread | None = None     # syscall: per CPU, median burst
    burst_p10: float | None = None                 # events/s of the slow / fast bursts
    burst_p90: float | None = None
    events_per_sec_total: float | None = None      # syscall: summed over CPUs
    empty_events_per_sec: Spread | None = None     # syscall: the trigger with the empty program
    prog_ns_per_event: float | None = None         # syscall: bpf_stats of the triple program
    verification: Verification | None = None
    memory: Memory | None = None
    peer: PeerFigure | None = None
    htab_mem: HtabMemPeer | None = None
    refused: Refusal | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.type}/{'prealloc' if self.prealloc else 'no_prealloc'}"

    @property
    def alloc(self) -> str:
        return "prealloc" if self.prealloc else "no_prealloc"

    @property
    def flagged(self) -> bool:
        """The run did not prove itself: a refused map, events that do not
        match the triggers, or failed map calls."""
        return self.refused is not None or (self.verification is not None
                                            and not self.verification.ok)

    @property
    def noisy(self) -> bool:
        main = self.mode.headline(self)
        return bool(main and main.noisy)

    def speed(self) -> float | None:
        """This record's speed per CPU, the one the seed's table compares:
        triples/s in the kernel, events/s when syscall-triggered (``mode.unit``)."""
        return self.mode.speed(self)


def agree(a: Spread | None, b: Spread | None, tolerance: float = CLOCK_TOLERANCE
          ) -> bool | None:
    """Whether two clocks' medians agree within ``tolerance`` (None: one is missing)."""
    if a is None or b is None or not a.median:
        return None
    return abs(b.median / a.median - 1) <= tolerance


def within(ratio: float | None, tolerance: float = PEER_TOLERANCE) -> bool | None:
    return None if ratio is None else abs(ratio - 1) <= tolerance


def load(data: Any) -> list[BenchRecord]:
    """The records of a ``pybpfmap bench --json`` document."""
    if not isinstance(data, list):
        raise ValueError("a bench document is a list of records")
    return [from_json(BenchRecord, r) for r in data]


def _find(records: list[BenchRecord], mode: Mode, type: str, prealloc: bool, cpus: int,
          max_entries: int, fill_percent: int) -> BenchRecord | None:
    return next((r for r in records if (r.mode, r.type, r.prealloc, r.cpus, r.max_entries,
                                        r.fill_percent)
                 == (mode, type, prealloc, cpus, max_entries, fill_percent)), None)


def pre_no_ratio(records: list[BenchRecord], *, mode: Mode, type: str, cpus: int,
                 max_entries: int, fill_percent: int = 0, peer: bool = False) -> float | None:
    """Prealloc speed / BPF_F_NO_PREALLOC speed for one map type, mode, CPU
    count and size (the seed's "pcpu_freelist / kmalloc"); ``peer`` gives
    map_perf_test's own ratio from the same records.  None when either side
    is missing, refused or flagged (a run that failed its checks is no figure)."""
    pair = [_find(records, mode, type, p, cpus, max_entries, fill_percent)
            for p in (True, False)]
    if any(r is None or r.flagged for r in pair):
        return None
    if peer:
        rates = [r.peer.events_per_sec.median if r.peer else None for r in pair]
    else:
        rates = [r.speed() for r in pair]
    if rates[0] is None or not rates[1]:
        return None
    return rates[0] / rates[1]
