"""The triple timed by the kernel: BPF_PROG_TEST_RUN with ``repeat``.

``bpf/bench_triple.c`` is loaded as a SCHED_CLS program (skb programs accept
``repeat``; raw_tp test_run refuses it) and run on an all-zero Ethernet frame.
The kernel returns the average duration of one run over ``repeat`` runs
(bpf_test_timer in net/bpf/test_run.c), in whole ns.  The same is done with an
empty program, and its cost is subtracted, so what remains is the triple.

For k CPUs, k threads each pin themselves to one CPU and issue their own
test_run calls concurrently for the same wall-clock window (ctypes releases the
GIL during the syscall); each thread's figure is the median of its calls.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pybpfmap import bpfsys
from pybpfmap.errors import KernelError
from pybpfmap.loader import bcc_program, map_fd
from pybpfmap.maps import MapSpec

PACKET = bytes(64)  # skb test_run needs at least ETH_HLEN bytes of data
SOURCE = "bench_triple.c"


@dataclass
class Programs:
    """The loaded triple and empty programs and the map they use."""

    triple_fd: int
    empty_fd: int
    map_fd: int
    triples: int


@contextmanager
def load(spec: MapSpec, triples: int = 1) -> Iterator[Programs]:
    """Load ``bench_triple`` and ``bench_empty`` on a map made from ``spec``."""
    with bcc_program(SOURCE, maps={"MAP": spec}, cflags=[f"-DTRIPLES={triples}"]) as b:
        from bcc import BPF

        triple = b.load_func(b"bench_triple", BPF.SCHED_CLS)
        empty = b.load_func(b"bench_empty", BPF.SCHED_CLS)
        yield Programs(triple.fd, empty.fd, map_fd(b, "MAP"), triples)


def run_once(fd: int, repeat: int) -> int:
    """One BPF_PROG_TEST_RUN; the kernel's per-run average in ns."""
    try:
        return bpfsys.prog_test_run(fd, PACKET, repeat).duration_ns
    except bpfsys.BpfSyscallError as e:
        raise KernelError("BPF_PROG_TEST_RUN", e.errno,
                          "the kernel refused to test-run the bench program") from None


def calibrate(fd: int, seconds: float) -> int:
    """A ``repeat`` that makes one test_run of ``fd`` last about ``seconds``."""
    repeat = 1000
    while True:
        t0 = time.perf_counter()
        run_once(fd, repeat)
        spent = time.perf_counter() - t0
        if spent >= seconds / 4 or repeat >= 1 << 28:
            return max(1000, min(int(repeat * seconds / max(spent, 1e-9)), 1 << 30))
        repeat *= 8


def _pinned_calls(cpus: list[int], fd: int, repeat: int, seconds: float) -> list[float]:
    """On each CPU at once, call test_run until ``seconds`` pass; per CPU the
    interquartile mean of the calls' durations (the first call, a warm-up, is
    dropped).  The kernel reports whole ns; averaging the middle half of the
    calls gives a finer figure while ignoring calls disturbed by interrupts."""
    barrier = threading.Barrier(len(cpus))
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(cpu: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # 0 = this thread
            barrier.wait()
            end = time.monotonic() + seconds
            got = [run_once(fd, repeat)]
            while time.monotonic() < end or len(got) < 5:
                got.append(run_once(fd, repeat))
            results[cpu] = got[1:]
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(cpu,), daemon=True) for cpu in cpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [interquartile_mean(results[cpu]) for cpu in cpus]


def interquartile_mean(values: list[int]) -> float:
    """Mean of the middle half of ``values`` (all of them when fewer than 4)."""
    v = sorted(values)
    q = len(v) // 4
    return statistics.fmean(v[q:len(v) - q])


@dataclass
class Sample:
    """One run on k CPUs: per CPU the triple and empty durations (ns per run)."""

    cpus: list[int]
    triple_ns: list[float]
    empty_ns: list[float]
    triples: int

    def ns_per_op(self, baseline: float | None = None) -> float:
        """Mean over CPUs of the net cost of one triple: the triple's run minus
        ``baseline`` (default: this run's own empty-program figure)."""
        return statistics.fmean(self._net(baseline))

    def ops_per_sec_total(self, baseline: float | None = None) -> float:
        """Triples per second summed over CPUs, from each CPU's net cost."""
        return sum(1e9 / max(n, 1e-9) for n in self._net(baseline))

    def _net(self, baseline: float | None) -> list[float]:
        empty = self.empty_ns if baseline is None else [baseline] * len(self.triple_ns)
        return [(t - e) / self.triples for t, e in zip(self.triple_ns, empty, strict=True)]


def baseline(samples: list[Sample]) -> float:
    """The empty program's cost over several runs: the median of each run's
    mean.  It is a constant of the machine, so one figure for all runs keeps a
    disturbed empty measurement from moving one run's net figure."""
    return statistics.median(statistics.fmean(s.empty_ns) for s in samples)


def measure(progs: Programs, cpus: list[int], seconds: float, repeat: int,
            empty_repeat: int) -> Sample:
    """Empty program on every CPU at once, then the triple on every CPU at once."""
    empty = _pinned_calls(cpus, progs.empty_fd, empty_repeat, seconds / 4)
    triple = _pinned_calls(cpus, progs.triple_fd, repeat, seconds)
    return Sample(cpus, triple, empty, progs.triples)
