"""The triple triggered by a syscall, as samples/bpf/map_perf_test does it.

``trig_triple`` or ``trig_empty`` (bpf/bench_triple.c) runs on every
getuid(): on a kprobe on the syscall's entry function where the kernel has
kprobes (map_perf_test's way), else on the ``syscalls:sys_enter_getuid``
tracepoint, else on the ``sys_enter`` raw tracepoint filtered by syscall
number (:mod:`pybpfmap.bench.triggers`).  One trigger process per CPU,
pinned, calls getuid() in a tight loop — the compiled loop
``trigger_loop.c`` for every CPU count wherever a C compiler exists (the
Python loop only as the labelled fallback: it is slower per call, so it
would lower the rate per CPU and hide contention).
All start at one moment, warm up (discarded), then count their calls over
the same window: events per second per CPU, the whole window's mean, with
the median burst and its spread beside it (a burst median would drop the
deferred work — irq_work refills, RCU callbacks — that the mean keeps).

Every window is verified: the program's own count of runs on each CPU
against that CPU's trigger calls.  The kernel's ``run_time_ns / run_cnt``
of the program (bpf_stats) is taken over the first half of the warm-up
only, so that the measured window runs without the stats' two clock reads
per event.

A tracing program on a BPF_F_NO_PREALLOC hash is what Linux kernel commit
94dacdbd5d2d ("bpf: Tighten the requirements for preallocated hash maps")
(in v5.7) warns about (a one-time WARN splat; refused on PREEMPT_RT) until
Linux kernel commit 96da3f7d489d ("bpf: Remove tracing program restriction
on map types") (in v6.1): on such kernels run the syscall mode in the test VM.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from itertools import repeat, starmap
from pathlib import Path

from pybpfmap import bpfsys, procs
from pybpfmap.bench.program import Bench, Counts, ProgStats
from pybpfmap.errors import EnvironmentProblem

LOOP_C = Path(__file__).resolve().parent / "trigger_loop.c"
COMPILERS = ("cc", "gcc", "clang")
BURST_NS = 50_000   # as trigger_loop.c: a burst grows until it lasts this long
START_DELAY = 0.02  # s between "everyone ready" and the common start


# --- the trigger processes -------------------------------------------------

@dataclass
class Loop:
    """The trigger program: the compiled loop, or None for the Python fallback."""

    exe: Path | None
    label: str       # "compiled (cc -O2)" or "python (fallback: ...)"


def compiled_loop() -> Loop:
    """trigger_loop.c built with the first C compiler found, cached by source hash."""
    cc = next((p for p in map(shutil.which, COMPILERS) if p), None)
    if cc is None:
        return Loop(None, f"python (fallback: no C compiler, none of {', '.join(COMPILERS)})")
    src = LOOP_C.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pybpfmap"
    exe = cache / f"trigger_loop-{hashlib.sha256(src).hexdigest()[:12]}"
    label = f"compiled ({Path(cc).name} -O2)"
    if exe.exists():
        return Loop(exe, label)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(f".{os.getpid()}")
        out = subprocess.run([cc, "-O2", "-o", str(tmp), str(LOOP_C)],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Loop(None, f"python (fallback: building {LOOP_C.name} failed: {e})")
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no message"])[-1][:160]
        return Loop(None, f"python (fallback: {Path(cc).name} failed: {why})")
    tmp.replace(exe)
    return Loop(exe, label)


@dataclass
class Calls:
    """What one trigger process did."""

    cpu: int
    warmup_calls: int
    calls: int
    window_ns: int
    bursts: int
    median_ns: float   # ns per call within a burst: median, 10th, 90th percentile
    p10_ns: float
    p90_ns: float

    @property
    def rate(self) -> float:
        """Calls (events) per second over the whole window."""
        return self.calls * 1e9 / self.window_ns if self.window_ns else 0.0

    @property
    def burst_rate(self) -> float:
        return 1e9 / self.median_ns if self.median_ns else 0.0


def _parse(cpu: int, text: str) -> Calls:
    try:
        w, c, ns, n, med, p10, p90 = text.split()
        return Calls(cpu, int(w), int(c), int(ns), int(n), float(med), float(p10), float(p90))
    except ValueError:
        raise EnvironmentProblem("bench --mode syscall", f"trigger on CPU {cpu} printed "
                                 f"{text.strip()[:80]!r}") from None


def _python_loop(start: int, warmup: int, window: int) -> str:
    """The Python trigger: trigger_loop.c's loop, getuid() from C-level
    iterators (no bytecode per call)."""
    getuid, clock = os.getuid, time.monotonic_ns
    while clock() < start:
        pass
    warm_end, end = start + warmup, start + warmup + window
    burst, warm_calls, t = 1, 0, clock()
    while t < warm_end:
        t0 = t
        deque(starmap(getuid, repeat((), burst)), maxlen=0)
        warm_calls += burst
        t = clock()
        if t - t0 < BURST_NS and burst < 1 << 20:
            burst *= 2
    begin, per_call, calls = t, [], 0
    while True:
        t0 = t
        deque(starmap(getuid, repeat((), burst)), maxlen=0)
        calls += burst
        t = clock()
        per_call.append((t - t0) / burst)
        if t >= end:
            break
    per_call.sort()
    n = len(per_call)
    return (f"{warm_calls} {calls} {t - begin} {n} {per_call[n // 2]:.3f} "
            f"{per_call[n // 10]:.3f} {per_call[n - 1 - n // 10]:.3f}")


class _Trigger:
    """One pinned trigger process (compiled or a forked Python loop), leading
    a process group of its own that pybpfmap owns (:mod:`pybpfmap.procs`)."""

    def __init__(self, loop: Loop, cpu: int, warmup_ns: int, window_ns: int):
        self.cpu = cpu
        if loop.exe is not None:
            child = procs.Child(
                [str(loop.exe), str(warmup_ns), str(window_ns)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
            self.group = child.group
            self._in, self._out = child.popen.stdin, child.popen.stdout
            return
        start_r, start_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: pin, say ready, wait for the start, loop, report
            code = 1
            try:
                procs.child_setup()
                os.setpgid(0, 0)
                os.close(start_w)
                os.close(out_r)
                os.sched_setaffinity(0, {cpu})
                os.write(out_w, b"ready\n")
                with os.fdopen(start_r) as f:
                    start = int(f.readline())
                os.write(out_w, (_python_loop(start, warmup_ns, window_ns) + "\n").encode())
                code = 0
            finally:
                os._exit(code)
        os.close(start_r)
        os.close(out_w)
        self.group = procs.adopt(pid)
        self._in, self._out = os.fdopen(start_w, "w"), os.fdopen(out_r)

    def ready(self) -> None:
        line = self._out.readline()
        if line.strip() != "ready":
            raise EnvironmentProblem("bench --mode syscall",
                                     f"the trigger for CPU {self.cpu} did not start")

    def start(self, at_ns: int) -> None:
        self._in.write(f"{at_ns}\n")
        self._in.flush()
        self._in.close()

    def result(self) -> Calls:
        text = self._out.read()
        self._out.close()
        status = self.group.wait()
        if status != 0:
            raise EnvironmentProblem("bench --mode syscall",
                                     f"the trigger for CPU {self.cpu} failed (status {status})")
        return _parse(self.cpu, text)

    def kill(self) -> None:
        """Kill its group (if anything of it is left), wait until none of it
        is alive, and close the pipes."""
        try:
            self.group.kill()
        finally:
            for f in (self._in, self._out):
                with contextlib.suppress(OSError):
                    f.close()


# --- one window --------------------------------------------------------------

@dataclass
class Phase:
    """One program on k CPUs: warm-up, then the window."""

    calls: list[Calls]
    counts: Counts
    stats: ProgStats | None          # the kernel's counters over the warm-up (None: unavailable)
    recursion_misses: int | None     # over warm-up and window (None: no such field)

    @property
    def cpus(self) -> list[int]:
        return [c.cpu for c in self.calls]

    def rate(self) -> float:
        """Events per second per CPU (mean over CPUs of whole-window means)."""
        return sum(c.rate for c in self.calls) / len(self.calls)

    def burst_rate(self) -> float:
        """Events per second per CPU in the median burst."""
        return sum(c.burst_rate for c in self.calls) / len(self.calls)

    def burst_rate_at(self, percentile: int) -> float:
        """Events per second per CPU at the 10th or 90th percentile of ns per call."""
        ns = {10: "p10_ns", 90: "p90_ns"}[percentile]
        return sum(1e9 / getattr(c, ns) for c in self.calls if getattr(c, ns)) / len(self.calls)

    def total_rate(self) -> float:
        return sum(c.rate for c in self.calls)

    # what :func:`pybpfmap.bench.verify.verify` checks (as inkernel.Phase)
    def triggers(self) -> int:
        """The trigger calls: each should run the program once."""
        return sum(c.warmup_calls + c.calls for c in self.calls)

    def events(self) -> int:
        """Program runs on the trigger CPUs (stray getuid() calls of other
        processes there count too; those elsewhere are :meth:`elsewhere`)."""
        return sum(self.counts.events[c] for c in self.cpus if c < len(self.counts.events))

    def elsewhere(self) -> int:
        """Program runs on other CPUs (other processes' getuid() there)."""
        return sum(n for c, n in enumerate(self.counts.events) if c not in self.cpus)


def window(bench: Bench, prog: str, loop: Loop, cpus: list[int], warmup: float,
           seconds: float) -> Phase:
    """Attach ``trig_<prog>``, run one pinned trigger per CPU, detach."""
    name = f"trig_{prog}"
    bench.attach(prog)
    triggers: list[_Trigger] = []
    stats = contextlib.ExitStack()
    try:
        bench.reset()
        before = bench.stats(name)
        with contextlib.suppress(bpfsys.BpfSyscallError):  # no BPF_ENABLE_STATS (< 5.8)
            stats.enter_context(bpfsys.stats_enabled())
        for cpu in cpus:
            triggers.append(_Trigger(loop, cpu, int(warmup * 1e9), int(seconds * 1e9)))
        for t in triggers:
            t.ready()
        start = time.monotonic_ns() + int(START_DELAY * 1e9)
        for t in triggers:
            t.start(start)
        # bpf_stats over the first half of the warm-up only: the window runs
        # without the stats' two clock reads per event, and switching them off
        # (a static key: kernel text is patched, which under TCG also throws
        # away translated code) happens well before the window starts.
        time.sleep(max(0.0, (start + warmup * 0.5e9 - time.monotonic_ns()) / 1e9))
        warm = bench.stats(name).minus(before)
        stats.close()
        calls = [t.result() for t in triggers]
        counts = bench.read()
        misses = bench.stats(name).minus(before).recursion_misses
    finally:
        stats.close()
        for t in triggers:  # the finished ones too: nothing left in their groups
            t.kill()
        bench.detach()
    return Phase(calls, counts, warm if warm.run_cnt else None, misses)


@dataclass
class Sample:
    """One run on k CPUs: the empty program's window, then the triple's."""

    empty: Phase
    triple: Phase
    triples: int   # per event

    def net_ns(self) -> float:
        """ns per triple: the difference in ns per event, per triple."""
        t, e = self.triple.rate(), self.empty.rate()
        return (1e9 / t - 1e9 / e) / self.triples if t and e else 0.0

    def stats_net_ns(self) -> float | None:
        """ns per triple by the kernel's bpf_stats over the warm-ups."""
        t = self.triple.stats.ns_per_run if self.triple.stats else None
        e = self.empty.stats.ns_per_run if self.empty.stats else None
        return None if t is None or e is None else (t - e) / self.triples


def measure(bench: Bench, loop: Loop, cpus: list[int], warmup: float,
            seconds: float, settle: float = 0.0) -> Sample:
    """The empty program's window, then the triple's, each after ``settle``
    seconds of quiet (see :func:`pybpfmap.bench.run.settle_time`)."""
    time.sleep(settle)
    empty = window(bench, "empty", loop, cpus, warmup, seconds)
    time.sleep(settle)
    triple = window(bench, "triple", loop, cpus, warmup, seconds)
    return Sample(empty, triple, bench.work.syscall_triples)
