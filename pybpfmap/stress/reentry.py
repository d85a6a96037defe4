"""The re-entry scenario: one program inside another's update of the same key.

``bpf/reentry.c`` has an outer raw_tp program on ``sys_enter`` (only for this
process and getppid) that updates key K of the row's map, and an inner kprobe
program that updates K again while the outer one is inside its update.  The
inner program must run while the bucket lock is held: its kprobe goes on a
function that runs under that lock (:func:`pybpfmap.era.reentry_targets`
lists them per era; which of them can take a kprobe here is probed in
``available_filter_functions``, and whether one really runs inside the outer
update is probed by trying it: the program counts how often it fired there).

Then this process calls getppid() in a loop, pinned to CPU 0, for the
row's duration, with the heartbeat and the kernel-log watch running.  What the
inner update gets is the measurement: -EBUSY (map_locked), -EDEADLK or
-ETIMEDOUT (rqspinlock), or — where neither exists — nothing at all, because
CPU 0 is locked up (the host's watchdog sees its heartbeat stop).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from pybpfmap import commits, era, procs, tracefs
from pybpfmap.errors import UsageError
from pybpfmap.guest import mark
from pybpfmap.kernel import Kernel
from pybpfmap.loader import bcc_program
from pybpfmap.stress import watch, workloads
from pybpfmap.stress.allocator import NERRNO, bpf_stats, cpu_sum, prog_stats, result_counts
from pybpfmap.stress.kinds import MapKind
from pybpfmap.stress.probes import KPROBE, RAW_TP
from pybpfmap.stress.records import SKIPPED, ProbeStats, StressRow

NAME = "reentry"
SYSCALL = "getppid"
TRIAL_CALLS = 200     # calls to find out whether the inner program fires inside the update
BATCH = 1000          # calls between clock reads


def syscall_nr(name: str) -> int:
    """The syscall number of ``name`` on this architecture (BCC's table)."""
    from bcc.syscall import syscalls  # {nr: name} for this architecture

    for nr, sname in syscalls.items():
        if sname == name.encode():
            return nr
    raise UsageError("--scenario", f"no syscall number for {name} on this architecture")


def targets_here(k: Kernel, kind: MapKind) -> tuple[list[str], str]:
    """The era's candidate functions that can take a kprobe here, and why the
    others cannot (or why there are none)."""
    wanted = era.reentry_targets(k.kernel_facts(), kind.spec)
    if not wanted:
        return [], (f"no traceable function runs under a {kind.spec.type} map's bucket lock "
                    f"on this kernel (its bucket lock is a resilient spinlock, "
                    f"{commits.RQSPINLOCK.cite()}, and its elements are taken before locking)")
    traceable = tracefs.traceable_functions()
    ok = [t for t in wanted if traceable is None or t in traceable]
    if not ok:
        return [], (f"none of {', '.join(wanted)} can take a kprobe here (not in "
                    f"{tracefs.FILTER_FUNCTIONS}: inlined or notrace)")
    return ok, ""


@dataclass
class Reentry:
    bpf: object
    inner_fd: int
    outer_fd: int


@contextmanager
def loaded(kind: MapKind) -> Iterator[Reentry]:
    """bpf/reentry.c on ``kind``'s map: the outer raw_tp program is attached by
    BCC at load (RAW_TRACEPOINT_PROBE); the inner one is loaded, not attached."""
    cflags = [f"-DPID={os.getpid()}", f"-DNR={syscall_nr(SYSCALL)}", f"-DNERRNO={NERRNO}"]
    with bcc_program("reentry.c", maps={"MAP": kind.spec}, cflags=cflags) as bpf:
        inner = KPROBE.load(bpf, "inner", f"{kind.name} inner program")
        outer = bpf.load_func(b"raw_tracepoint__sys_enter", RAW_TP.prog_type()).fd
        yield Reentry(bpf, inner, outer)




def _fired(r: Reentry) -> int:
    return cpu_sum(r.bpf[b"inner_fired"], 0)


def calls(n: int) -> None:
    """``n`` calls of :data:`SYSCALL`, whose sys_enter the scenarios' programs watch."""
    getppid = os.getppid
    for _ in range(n):
        getppid()


def calls_for(seconds: float) -> int:
    """:data:`SYSCALL` in a loop for ``seconds``; how many calls were made."""
    made, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        calls(BATCH)
        made += BATCH
    return made


def new_row(kind: MapKind) -> StressRow:
    """The row of ``kind``, not yet run (its probes are found when it runs)."""
    return StressRow(NAME, kind.name, kind.spec.type, kind.spec.prealloc,
                     kind.spec.value_size, KPROBE.name, "", note=kind.note)


def run_row(kind: MapKind, k: Kernel, duration: float, inject) -> tuple[StressRow, str]:
    """One row of the re-entry scenario on ``kind``; the (not yet judged) row and
    the kernel log lines of its window."""
    row = new_row(kind)
    targets, why_not = targets_here(k, kind)
    if not targets:
        row.outcome, row.reasons = SKIPPED, [why_not]
        return row, ""
    mark("row-start", row.label)
    with workloads.on_first_cpu():
        return _run(row, kind, k, targets, duration, inject)


def _run(row: StressRow, kind: MapKind, k: Kernel, targets: list[str], duration: float,
         inject) -> tuple[StressRow, str]:
    tried = []
    with ExitStack() as stack:
        stack.enter_context(bpf_stats())
        kmsg = stack.enter_context(watch.kmsg_watch())
        r = stack.enter_context(loaded(kind))
        group = tracefs.unique_group()
        hb = stack.enter_context(watch.heartbeat())
        t0 = time.monotonic()
        target = event = None
        for candidate in targets:
            with ExitStack() as trial:
                ev = KPROBE.attach(r.inner_fd, candidate, group=group, tag="inner",
                                   events=trial, links=trial)
                mark("armed", row.label, candidate)
                before = _fired(r)
                calls(TRIAL_CALLS)
                if _fired(r) > before:
                    target, event = candidate, ev
                    stack.enter_context(trial.pop_all())
                    break
                tried.append(candidate)
        if target is None:
            row.outcome = SKIPPED
            row.reasons = [f"no candidate ran inside the update here: a kprobe on "
                           f"{', '.join(tried)} never fired while the outer program held "
                           "the bucket lock"]
            return row, kmsg.read_new()
        procs.tell_ready()  # both programs attached: what a Ctrl-C must undo (once a run)
        row.probe = f"raw_tp sys_enter + kprobe {target}"
        if tried:
            row.note = f"{', '.join(tried)}: never inside the update here; {target} is"
        with inject():
            made = TRIAL_CALLS + calls_for(duration)
        row.seconds = round(time.monotonic() - t0, 2)
        profile = tracefs.kprobe_profile([event])
        inner = result_counts(r.bpf[b"inner_counts"])
        outer = result_counts(r.bpf[b"outer_counts"])
        fired = _fired(r)
        stats_inner = prog_stats(r.inner_fd, KPROBE, k.kernel_release)
        stats_outer = prog_stats(r.outer_fd, RAW_TP, k.kernel_release)
        kernel_log = kmsg.read_new()
    prof = profile.get(event)
    row.per_probe = [
        ProbeStats(f"sys_enter ({SYSCALL})", RAW_TP.name, sum(outer.values()),
                   {"update": outer}, **stats_outer),
        ProbeStats(target, KPROBE.name, fired, {"nested update": inner}, **stats_inner,
                   kprobe_hits=prof.hits if prof else None,
                   kprobe_nmissed=prof.nmissed if prof else None),
    ]
    row.events = fired
    row.errors = {op: errs for p in row.per_probe for op, errs in p.errors().items()}
    row.heartbeat_max_delay_s = round(hb.max_delay_s, 4)
    row.workloads = {"syscalls": {"name": SYSCALL, "calls": made}}
    mark("row-end", row.label)
    return row, kernel_log
