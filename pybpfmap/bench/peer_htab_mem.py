"""The kernel selftests' ``bench htab-mem``, run as a peer of pybpfmap's bench.

Linux kernel commit fd283ab196a8 ("selftests/bpf: Add benchmark for bpf
memory allocator") (in v6.6) added it: producer threads call getpgid() in a
loop, a tracepoint program on it runs a batch of hash-map operations through
``bpf_loop``, and every second the tool prints the program runs ("ops") per
producer and the ``memory.current`` of the memory cgroup it made for itself;
at the end, the mean and standard deviation of both and ``memory.peak``.
It is built on the host (:mod:`pybpfmap.vm.peers`); this module runs a build
and parses what it prints into :class:`HtabMemResult` records.

What one of its "ops" is: one run of the program, which does ``OP_BATCH``
(64) map operations.  ``overwrite`` updates 64 keys (flags 0) per op;
``batch_add_batch_del`` updates 64 keys then deletes them and counts 2 ops;
``add_del_on_diff_cpu`` pairs producers, one adding 64 keys (BPF_NOEXIST) per
op, the other deleting them, in lock step.  The map has
``max(8192, 64 * CPUs)`` entries and ``BPF_F_NO_PREALLOC`` unless
``--preallocated``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pybpfmap import guest, procs, tracefs
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.vm.peers import HTAB_MEM as NAME
from pybpfmap.vm.peers import HtabMemBuild

KILL_WAIT = 10.0
SETUP_ALLOWANCE = 60.0         # s beyond warmup + duration: load, cgroup setup (TCG is slow)


# -- running it --------------------------------------------------------------

@dataclass(frozen=True)
class HtabMemOptions:
    """One run of ``bench htab-mem``: bench.c's options, then the bench's own."""

    use_case: str = "overwrite"
    producers: int = 1          # -p: producer threads (none pinned unless affinity)
    value_size: int = 8         # --value-size, bytes
    preallocated: bool = False  # --preallocated: else BPF_F_NO_PREALLOC
    duration: int = 5           # -d: measured seconds (one sample each)
    warmup: int = 1             # -w: first seconds, printed but not summarised
    affinity: bool = False      # -a: pin producer i to CPU i (modulo CPUs)

    def check(self, build: HtabMemBuild) -> None:
        """UsageError naming the parameter the bench would refuse."""
        if self.use_case not in build.use_cases:
            raise UsageError("use_case", f"{self.use_case!r} is not one of "
                             f"{', '.join(build.use_cases)}")
        if self.producers < 1:
            raise UsageError("producers", f"{self.producers}: need at least one")
        if self.use_case == "add_del_on_diff_cpu" and self.producers % 2:
            raise UsageError("producers", f"{self.producers}: {self.use_case} pairs an adding "
                             "and a deleting producer, so needs an even number")
        if not 1 <= self.value_size <= 4096:
            raise UsageError("value_size", f"{self.value_size}: the bench takes 1..4096 bytes")
        for opt, used in (("value-size", self.value_size != 8),
                          ("preallocated", self.preallocated)):
            if used and opt not in build.options:
                raise UsageError(opt.replace("-", "_"), f"this build's bench has no --{opt}")
        if self.duration < 1 or self.warmup < 1:
            raise UsageError("duration" if self.duration < 1 else "warmup",
                             "the bench takes whole seconds >= 1")

    def argv(self, binary: Path) -> list[str]:
        return [str(binary), "-p", str(self.producers), "-d", str(self.duration),
                "-w", str(self.warmup), *(["-a"] if self.affinity else []), NAME,
                "--use-case", self.use_case, "--value-size", str(self.value_size),
                *(["--preallocated"] if self.preallocated else [])]


@dataclass(frozen=True)
class HtabMemSample:
    """One ``Iter`` line: one second's figures."""

    index: int
    slip_us: float              # how late the 1 s timer fired, as printed
    kops_per_producer: float    # k ops/s per producer
    memory_mib: float           # the cgroup's memory.current, MiB
    warmup: bool                # within -w: not in the summary


@dataclass(frozen=True)
class HtabMemSummary:
    """The ``Summary`` line: over the samples after the warm-up."""

    kops_per_producer: float
    kops_stddev: float
    memory_mib: float
    memory_stddev_mib: float
    peak_mib: float             # the cgroup's memory.peak at the end


@dataclass(frozen=True)
class HtabMemResult:
    """One run of ``bench htab-mem``: its options, samples and summary."""

    options: HtabMemOptions
    samples: tuple[HtabMemSample, ...]
    summary: HtabMemSummary
    unavailable: tuple[str, ...] = ()   # cgroup files it could not read ("memory.peak")
    nr_cpus: int | None = None          # online CPUs where it ran (sizes the map)
    max_entries: int | None = None
    op_batch: int | None = None         # map operations per op
    build: str = ""                     # HtabMemBuild.describe()

    @property
    def memory_known(self) -> bool:
        """False when the bench printed 0 for want of memory.current."""
        return "memory.current" not in self.unavailable

    @property
    def peak_known(self) -> bool:
        return "memory.peak" not in self.unavailable

    def line(self) -> str:
        """One human line."""
        o, s = self.options, self.summary
        kind = "prealloc" if o.preallocated else "no_prealloc"
        mem = (f"memory {s.memory_mib:.2f} ± {s.memory_stddev_mib:.2f} MiB"
               if self.memory_known else "memory unavailable")
        peak = f", peak {s.peak_mib:.2f} MiB" if self.peak_known else ""
        return (f"{NAME} {o.use_case} hash/{kind} value {o.value_size} B, "
                f"{o.producers} producer{'s' if o.producers != 1 else ''}: "
                f"{s.kops_per_producer:.2f} ± {s.kops_stddev:.2f} k ops/s per producer "
                f"(op = {self.op_batch or '?'} map calls), {mem}{peak}")


_NUM = r"([-+]?(?:\d+(?:\.\d+)?|nan|inf))"
# bench_htab_mem.c's htab_mem_report_progress() and htab_mem_report_final()
_SAMPLE = re.compile(rf"^Iter\s+(\d+)\s+\(\s*{_NUM}us\):\s+per-prod-op\s+{_NUM}k/s,"
                     rf"\s+memory usage\s+{_NUM}MiB$")
_SUMMARY = re.compile(rf"^Summary:\s+per-prod-op\s+{_NUM}\s+±\s+{_NUM}k/s,"
                      rf"\s+memory usage\s+{_NUM}\s+±\s+{_NUM}MiB,"
                      rf"\s+peak memory usage\s+{_NUM}MiB$")
_NO_FILE = re.compile(r"^no (memory\.\w+)$")


def parse(stdout: str, stderr: str, options: HtabMemOptions) -> HtabMemResult:
    """The samples and summary ``bench htab-mem`` printed; EnvironmentProblem
    without a summary (it exits early after a setup failure)."""
    samples = []
    summary = None
    for line in stdout.splitlines():
        line = line.strip()
        if m := _SAMPLE.match(line):
            i = int(m[1])
            samples.append(HtabMemSample(i, float(m[2]), float(m[3]), float(m[4]),
                                         i < options.warmup))
        elif m := _SUMMARY.match(line):
            summary = HtabMemSummary(*(float(m[k]) for k in range(1, 6)))
    unavailable = tuple(sorted({m[1] for x in stderr.splitlines()
                                if (m := _NO_FILE.match(x.strip()))}))
    if summary is None:
        said = [x for x in stderr.splitlines() if x.strip()]
        raise EnvironmentProblem(f"bench {NAME}", "printed no summary"
                                 + (f" ({said[-1].strip()})" if said else ""))
    return HtabMemResult(options, tuple(samples), summary, unavailable)


def run(build: HtabMemBuild, options: HtabMemOptions = HtabMemOptions(),
        timeout: float | None = None) -> HtabMemResult:
    """Run the build's ``bench htab-mem`` with ``options`` (needs root: it
    mounts cgroup2 in a mount namespace of its own and loads BPF) and return
    its figures.  Any failure is an EnvironmentProblem with one line."""
    options.check(build)
    if not os.access(build.binary, os.X_OK):
        raise EnvironmentProblem(str(build.binary), "missing or not executable")
    if build.release != os.uname().release:
        raise EnvironmentProblem(str(build.path), f"built for kernel {build.release}, this "
                                 f"one is {os.uname().release}")
    tracefs.ensure_tracefs()  # libbpf attaches its tracepoints by their tracefs ids
    timeout = timeout or options.warmup + options.duration + SETUP_ALLOWANCE
    argv = options.argv(build.binary)
    try:
        done = procs.capture(argv, timeout, KILL_WAIT, pass_fds=guest.control_fds())
    except procs.StuckProcess as e:
        raise EnvironmentProblem(f"bench {NAME}", str(e)) from None
    if done.timed_out:
        raise EnvironmentProblem(f"bench {NAME}", f"still running after {timeout:g} s "
                                 f"({' '.join(argv[1:])}); killed")
    if done.returncode != 0:
        said = [x.strip() for x in done.stderr.splitlines() if x.strip()]
        how = (f"killed by signal {-done.returncode}" if done.returncode < 0
               else f"exit status {done.returncode}")
        raise EnvironmentProblem(f"bench {NAME}", f"{how}: {said[-1] if said else 'no message'}")
    result = parse(done.stdout, done.stderr, options)
    nr_cpus = os.sysconf("SC_NPROCESSORS_ONLN")  # the bench's get_nprocs()
    return HtabMemResult(result.options, result.samples, result.summary, result.unavailable,
                         nr_cpus, build.max_entries(nr_cpus), build.op_batch, build.describe())
