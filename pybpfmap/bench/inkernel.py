"""The triple timed in the kernel: BPF_PROG_TEST_RUN with ``repeat``, three clocks.

``bench_triple`` / ``bench_empty`` (SCHED_CLS: skb programs accept
``repeat``) run on an all-zero Ethernet frame.  For k CPUs, k threads pin
themselves to one CPU each and call test_run concurrently for the same
window (ctypes releases the GIL in the syscall); the first call of each
thread warms up and is not timed, but is counted.  Three clocks time the
same calls:

- ``test_run``: the kernel's own per-run average (bpf_test_timer in
  net/bpf/test_run.c), in whole ns per *run*.  A run does
  ``INKERNEL_TRIPLES`` triples (default 100), so its 1 ns resolution is
  1/100 ns per triple — below 1% of any triple's cost;
- ``bpf_stats``: ``run_time_ns / run_cnt`` of the program over the same
  calls (bpf_prog_info; counted while pybpfmap holds a BPF_ENABLE_STATS fd:
  sched_clock() around every run, the same for both programs, so it cancels
  in the difference), an independent clock in the kernel;
- ``wall``: CLOCK_MONOTONIC around each syscall in user space, divided by
  ``repeat`` (includes the syscall and the frame's setup, amortised).

Each clock's ns per triple is (triple program - empty program) / triples.
Every call is verified: the program counts its runs on each CPU, which must
equal calls x repeat exactly, and its failed map calls by errno.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from dataclasses import dataclass

from pybpfmap import bpfsys
from pybpfmap.bench.program import Bench, Counts, ProgStats
from pybpfmap.errors import KernelError

PACKET = bytes(64)  # skb test_run needs at least ETH_HLEN bytes of data
CALL_SECONDS = 0.01  # one BPF_PROG_TEST_RUN call lasts about this long
MIN_CALLS = 3        # timed calls per thread and window, whatever the window


def run_once(fd: int, repeat: int) -> int:
    """One BPF_PROG_TEST_RUN; the kernel's per-run average in ns."""
    try:
        return bpfsys.prog_test_run(fd, PACKET, repeat).duration_ns
    except bpfsys.BpfSyscallError as e:
        raise KernelError("BPF_PROG_TEST_RUN", e.errno,
                          "the kernel refused to test-run the bench program") from None


def calibrate(fd: int, seconds: float = CALL_SECONDS) -> int:
    """A ``repeat`` that makes one test_run of ``fd`` last about ``seconds``."""
    repeat = 16
    while True:
        t0 = time.perf_counter()
        run_once(fd, repeat)
        spent = time.perf_counter() - t0
        if spent >= seconds / 4 or repeat >= 1 << 26:
            return max(16, min(int(repeat * seconds / max(spent, 1e-9)), 1 << 28))
        repeat *= 8


@dataclass
class Phase:
    """One program on k CPUs for one window."""

    cpus: list[int]
    repeat: int
    durations: dict[int, list[int]]   # cpu -> test_run ns per run, one per timed call
    wall_ns: dict[int, list[int]]     # cpu -> CLOCK_MONOTONIC ns of each timed call
    calls: dict[int, int]             # cpu -> calls made, the warm-up call included
    counts: Counts                    # what the program counted
    stats: ProgStats                  # the kernel's counters over the window

    def run_ns(self) -> float:
        """Mean over CPUs of the whole-window mean ns per run (test_run clock)."""
        return statistics.fmean(statistics.fmean(self.durations[c]) for c in self.cpus)

    def median_run_ns(self) -> float:
        """Mean over CPUs of the median call's ns per run."""
        return statistics.fmean(statistics.median(self.durations[c]) for c in self.cpus)

    def wall_run_ns(self) -> float:
        """Mean over CPUs of wall ns per run."""
        return statistics.fmean(sum(self.wall_ns[c]) / (len(self.wall_ns[c]) * self.repeat)
                                for c in self.cpus)

    # what :func:`pybpfmap.bench.verify.verify` checks (as syscall.Phase)
    def triggers(self) -> int:
        """The program runs asked for: calls x repeat."""
        return sum(self.calls.values()) * self.repeat

    def events(self) -> int:
        return sum(self.counts.events)

    def elsewhere(self) -> int:
        """Runs counted on CPUs that were not asked to run anything."""
        return sum(n for c, n in enumerate(self.counts.events) if c not in self.cpus)

    @property
    def recursion_misses(self) -> int | None:
        return self.stats.recursion_misses


def window(bench: Bench, prog: str, cpus: list[int], repeat: int, seconds: float) -> Phase:
    """``bench_<prog>`` on every CPU in ``cpus`` at once for ``seconds``."""
    fd = bench.prog_fd(f"bench_{prog}")
    barrier = threading.Barrier(len(cpus))
    durations: dict[int, list[int]] = {}
    walls: dict[int, list[int]] = {}
    calls: dict[int, int] = {}
    errors: list[BaseException] = []

    def worker(cpu: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # 0 = this thread
            barrier.wait()
            run_once(fd, repeat)  # warm-up
            got, wall = [], []
            end = time.monotonic() + seconds
            while time.monotonic() < end or len(got) < MIN_CALLS:
                t0 = time.perf_counter_ns()
                got.append(run_once(fd, repeat))
                wall.append(time.perf_counter_ns() - t0)
            durations[cpu], walls[cpu], calls[cpu] = got, wall, len(got) + 1
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            barrier.abort()

    with contextlib.ExitStack() as stack:
        with contextlib.suppress(bpfsys.BpfSyscallError):  # no BPF_ENABLE_STATS (< 5.8)
            stack.enter_context(bpfsys.stats_enabled())
        bench.reset()
        before = bench.stats(f"bench_{prog}")
        threads = [threading.Thread(target=worker, args=(cpu,), daemon=True) for cpu in cpus]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        stats = bench.stats(f"bench_{prog}").minus(before)
    return Phase(cpus, repeat, durations, walls, calls, bench.read(), stats)


@dataclass
class Sample:
    """One run on k CPUs: the empty program's window, then the triple's."""

    empty: Phase
    triple: Phase
    triples: int   # per program run

    def net(self, clock: str) -> float | None:
        """ns per triple by ``clock`` (test_run, test_run_median, bpf_stats, wall)."""
        if clock == "bpf_stats":
            t, e = self.triple.stats.ns_per_run, self.empty.stats.ns_per_run
            return None if t is None or e is None else (t - e) / self.triples
        f = {"test_run": Phase.run_ns, "test_run_median": Phase.median_run_ns,
             "wall": Phase.wall_run_ns}[clock]
        return (f(self.triple) - f(self.empty)) / self.triples

    def per_cpu_rates(self) -> list[float]:
        """Triples per second on each CPU, from its own net test_run figure."""
        out = []
        for c in self.triple.cpus:
            net = (statistics.fmean(self.triple.durations[c])
                   - statistics.fmean(self.empty.durations[c])) / self.triples
            out.append(1e9 / net if net > 0 else 0.0)
        return out


def measure(bench: Bench, cpus: list[int], seconds: float, repeat: int,
            empty_repeat: int, settle: float = 0.0) -> Sample:
    """Empty program on every CPU at once, then the triple on every CPU at once
    (the empty window is a quarter as long: it only gives the baseline), each
    after ``settle`` seconds of quiet (see :func:`pybpfmap.bench.run.settle_time`)."""
    time.sleep(settle)
    empty = window(bench, "empty", cpus, empty_repeat, max(seconds / 4, CALL_SECONDS))
    time.sleep(settle)
    triple = window(bench, "triple", cpus, repeat, seconds)
    return Sample(empty, triple, bench.work.inkernel_triples)
