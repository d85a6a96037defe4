"""The allocator scenario (the seed's): map updates from kprobes on spin_unlock.

A *probe* is one attach point: a kprobe on a spin_unlock function, or (the
weaker variant, for kernels without kprobes) a tracepoint on a lock or
allocation path.  Every probe runs the same handler (``bpf/stress.c``), which
does update -> lookup -> delete on the row's one map and counts each result
per errno.  :func:`run_row` loads it for one map kind, attaches every probe,
drives lock-heavy workloads and reads back what the kernel counted.

Order matters and every step is a context manager, so a failure or Ctrl-C
anywhere undoes what was done (probes first, then programs and maps, then the
network namespaces):

1. make the veth pair; run the workloads once *without* probes (baseline);
2. fork the workloads again (waiting); load the program, enable BPF run-time
   stats, attach every probe;
3. start the heartbeat and the kernel-log watch; let the workloads go;
4. detach, read kprobe_profile, bpf_prog_info and the counters, and the new
   kernel-log lines.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from pybpfmap import bpfsys, procs, tracefs
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.guest import mark
from pybpfmap.kernel import Kernel
from pybpfmap.loader import bcc_program
from pybpfmap.stress import watch, workloads
from pybpfmap.stress.kinds import MapKind
from pybpfmap.stress.latency import NSLOTS, Latency
from pybpfmap.stress.probes import KPROBE, TRACEPOINT, Probe, ProbeKind
from pybpfmap.stress.records import ProbeStats, StressRow, result_name

NAME = "allocator"
NPROBES = 8       # on_probe0 .. on_probe7 in bpf/stress.c
NERRNO = 136      # counter slots per (probe, op): errnos 1..134, then "other"
OPS = ("update", "lookup", "delete")
# The weaker variant: tracepoints on lock contention and on kmalloc/kfree.
TRACEPOINTS = ("lock:contention_begin", "lock:contention_end", "kmem:kmalloc", "kmem:kfree")


def tracepoints_available(names: Sequence[str] = TRACEPOINTS
                          ) -> tuple[list[str], dict[str, str]]:
    """Which tracepoints exist in tracefs here, and why the others cannot be used."""
    ok, why = [], {}
    for tp in names:
        cat, _, name = tp.partition(":")
        if tracefs.event_exists(cat, name):
            ok.append(tp)
        else:
            why[tp] = f"no {tracefs.TRACEFS}/events/{cat}/{name} (not built into this kernel)"
    return ok, why


def _tracepoint_probes(k: Kernel, names: Sequence[str] | None
                       ) -> tuple[list[Probe], dict[str, str]]:
    ok, why = tracepoints_available(names or TRACEPOINTS)
    return [Probe(TRACEPOINT, t) for t in ok], why


def _unlock_probes(k: Kernel, names: Sequence[str] | None
                   ) -> tuple[list[Probe], dict[str, str]]:
    if not k.kprobes:
        raise EnvironmentProblem("kprobes", k.kprobes_reason)
    wanted = list(names or (*k.unlock_symbols, *k.unlock_unavailable))
    probes, why = [], {}
    for sym in wanted:
        if sym in k.unlock_symbols:
            probes.append(Probe(KPROBE, sym))
        elif sym in k.unlock_unavailable:
            why[sym] = k.unlock_unavailable[sym]
        else:
            raise UsageError("--probes", f"{sym!r} is not a spin_unlock function pybpfmap "
                             f"knows; choose from {', '.join(k.unlock_symbols)}")
    return probes, why


# Where each kind of probe goes: the spin_unlock functions (the seed's), or
# the weaker variant's lock and kmem tracepoints.
ATTACH_POINTS = {KPROBE: _unlock_probes, TRACEPOINT: _tracepoint_probes}


def choose_probes(k: Kernel, names: Sequence[str] | None, kind: ProbeKind
                  ) -> tuple[list[Probe], dict[str, str]]:
    """The probes of ``kind`` to attach and, for each one asked for (or
    expected) but not attachable here, the reason."""
    if kind not in ATTACH_POINTS:
        raise UsageError("--probes", f"the allocator scenario has no {kind.name} probes")
    probes, why = ATTACH_POINTS[kind](k, names)
    if len(probes) > NPROBES:
        raise UsageError("--probes", f"at most {NPROBES} probes at once")
    return probes, why


@dataclass
class Loaded:
    """The loaded handler for one map kind, and its attached probes."""

    bpf: object
    probes: list[Probe]
    prog_fds: dict[Probe, int] = field(default_factory=dict)
    events: dict[Probe, str] = field(default_factory=dict)  # kprobe -> its tracefs event
    attachments: ExitStack = field(default_factory=ExitStack)

    def detach(self) -> None:
        """Detach every program now (idempotent); the maps and kprobe_profile
        stay readable until the program is unloaded."""
        self.attachments.close()


@contextmanager
def loaded(kind: MapKind, probes: Sequence[Probe], label: str) -> Iterator[Loaded]:
    """Load bpf/stress.c on ``kind``'s map and attach one handler per probe;
    everything is detached, unloaded and removed on exit."""
    if not probes:
        raise UsageError("--probes", "no probe to attach")
    with ExitStack() as stack:
        bpf = stack.enter_context(bcc_program(
            "stress.c", maps={"MAP": kind.spec},
            cflags=[f"-DNPROBES={NPROBES}", f"-DNERRNO={NERRNO}"]))
        out = Loaded(bpf, list(probes))
        # kprobe events outlive the attachments (closed first on unwind), so
        # that kprobe_profile can be read after detach(), with final counts.
        events = stack.enter_context(ExitStack())
        attach = stack.enter_context(out.attachments)
        group = tracefs.unique_group()
        for i, probe in enumerate(probes):
            fd = probe.kind.load(bpf, f"on_probe{i}", f"{kind.name} on {probe.target}")
            event = probe.kind.attach(fd, probe.target, group=group, tag=f"p{i}",
                                      events=events, links=attach)
            if event is not None:
                out.events[probe] = event
            out.prog_fds[probe] = fd
            mark("armed", label, probe.target)
        procs.tell_ready()  # every probe attached: what a Ctrl-C must undo (once a run)
        yield out


def slot_errno(slot: int, overflow: int = 0) -> int | None:
    """The errno a counter slot counts (0: success); the last slot counts the
    larger ones, of which the program kept ``overflow`` (a negative return
    value; 0: not kept, None)."""
    if slot == NERRNO - 1:
        return -overflow or None
    return slot


def cpu_sum(table, index: int) -> int:
    """Entry ``index`` of a BCC per-CPU array, summed over CPUs."""
    return sum(table[ctypes.c_int(index)])


def result_counts(table, base: int = 0) -> dict[str, int]:
    """{result: count} of one per-CPU counter array indexed by slot from
    ``base`` (summed over CPUs), results as records name them: the other
    scenarios' counters."""
    out: dict[str, int] = {}
    for slot in range(NERRNO):
        n = cpu_sum(table, base + slot)
        if n:
            key = result_name(slot_errno(slot))
            out[key] = out.get(key, 0) + n
    return out


def timed_latency(slots, maxima, index: int = 0) -> Latency:
    """The latency a program kept in per-CPU log2 ``slots`` (from ``index *
    NSLOTS``) and per-CPU ``maxima`` (entry ``index``): pybpfmap_count.h's
    ``log2_slot()`` and ``raise_to()``."""
    return Latency.from_log2([cpu_sum(slots, index * NSLOTS + s) for s in range(NSLOTS)],
                             max(maxima[ctypes.c_int(index)]) or None)


def read_counts(ld: Loaded) -> dict[int, dict[str, dict[str, int]]]:
    """{probe index: {op: {result: count}}}, summed over CPUs; results as
    records name them (:func:`~pybpfmap.stress.records.result_name`)."""
    counts = ld.bpf[b"stress_counts"]
    other = ld.bpf[b"stress_errno"]
    out: dict[int, dict[str, dict[str, int]]] = {}
    for p in range(len(ld.probes)):
        row: dict[str, dict[str, int]] = {}
        for o, op in enumerate(OPS):
            res: dict[str, int] = {}
            for slot in range(NERRNO):
                n = sum(counts[ctypes.c_int((p * len(OPS) + o) * NERRNO + slot)])
                if not n:
                    continue
                last = other[ctypes.c_int(p * len(OPS) + o)].value if slot == NERRNO - 1 else 0
                key = result_name(slot_errno(slot, last))
                res[key] = res.get(key, 0) + n
            row[op] = res
        out[p] = row
    return out


def prog_stats(fd: int, kind: ProbeKind, release: str) -> dict:
    """run_cnt, run_time_ns and recursion_misses of a program (bpf_prog_info).
    recursion_misses is None where this kernel does not count it for the
    program's kind (:meth:`~pybpfmap.stress.probes.ProbeKind.misses_counted`)."""
    info, has_misses = bpfsys.prog_info(fd)
    counted = has_misses and kind.misses_counted(release)
    return {"prog_run_cnt": info.run_cnt, "prog_run_time_ns": info.run_time_ns,
            "recursion_misses": info.recursion_misses if counted else None}


@contextmanager
def bpf_stats() -> Iterator[str]:
    """Count run_cnt/run_time_ns while inside; yields how.  BPF_ENABLE_STATS
    (v5.8) when the kernel has it, else the ``kernel.bpf_stats_enabled``
    sysctl, set to 1 and restored on exit."""
    try:
        ctx = bpfsys.stats_enabled()
        ctx.__enter__()
    except bpfsys.BpfSyscallError:
        ctx = None
    if ctx is not None:
        try:
            yield "BPF_ENABLE_STATS fd"
        finally:
            ctx.__exit__(None, None, None)
        return
    path = "/proc/sys/kernel/bpf_stats_enabled"
    try:
        with open(path) as f:
            before = f.read().strip()
        with open(path, "w") as f:
            f.write("1")
    except OSError:
        yield "unavailable"
        return
    try:
        yield f"sysctl kernel.bpf_stats_enabled (restored to {before})"
    finally:
        with open(path, "w") as f:
            f.write(before)


def default_baseline(duration: float) -> float:
    """Seconds of workload without probes before a row of ``duration`` s."""
    return min(3.0, max(1.0, duration / 4))


def new_row(kind: MapKind, variant: ProbeKind, probes: Sequence[Probe]) -> StressRow:
    """The row of ``kind`` under ``probes``, not yet run."""
    return StressRow(NAME, kind.name, kind.spec.type, kind.spec.prealloc,
                     kind.spec.value_size, variant.name, ",".join(p.target for p in probes),
                     note=kind.note)


def run_row(kind: MapKind, probes: list[Probe], k: Kernel, duration: float,
            baseline: float, inject, variant: ProbeKind) -> tuple[StressRow, str]:
    """One row: ``kind``'s map under every probe, with workloads, for ``duration``
    s; the (not yet judged) row and the kernel log lines of its window.

    ``inject`` is a context-manager factory for the negative controls (it runs
    around the stressed window)."""
    row = new_row(kind, variant, probes)
    mark("row-start", row.label)
    with ExitStack() as stack:
        pair = stack.enter_context(workloads.veth_pair())
        base = workloads.run(baseline, pair=pair)
        # Forked now, before the program is loaded and the heartbeat thread
        # starts: the workload processes hold no BPF or perf fd.
        wl = stack.enter_context(workloads.started(duration, pair=pair))
        stack.enter_context(bpf_stats())
        kmsg = stack.enter_context(watch.kmsg_watch())
        ld = stack.enter_context(loaded(kind, probes, row.label))
        t0 = time.monotonic()  # every probe attached
        hb = stack.enter_context(watch.heartbeat())
        with inject():
            wl.go()
            stressed = wl.results()
        ld.detach()
        profile = tracefs.kprobe_profile(list(ld.events.values()))
        stats = {p: prog_stats(fd, p.kind, k.kernel_release) for p, fd in ld.prog_fds.items()}
        counts = read_counts(ld)
        row.seconds = round(time.monotonic() - t0, 2)
        kernel_log = kmsg.read_new()
    for i, probe in enumerate(probes):
        prof = profile.get(ld.events.get(probe, ""))
        row.per_probe.append(ProbeStats(
            probe.target, probe.kind.name, sum(counts[i].get("update", {}).values()), counts[i],
            **stats[probe], kprobe_hits=prof.hits if prof else None,
            kprobe_nmissed=prof.nmissed if prof else None))
    row.events = sum(p.events for p in row.per_probe)
    for p in row.per_probe:
        for op, errs in p.errors().items():
            for err, n in errs.items():
                row.errors.setdefault(op, {})
                row.errors[op][err] = row.errors[op].get(err, 0) + n
    row.heartbeat_max_delay_s = round(hb.max_delay_s, 4)
    row.workloads = {"baseline": base, "stressed": stressed,
                     "ratio": {n: round(stressed[n]["ops_per_s"] / b["ops_per_s"], 3)
                               if b.get("ops_per_s") else None for n, b in base.items()}}
    mark("row-end", row.label)
    return row, kernel_log
