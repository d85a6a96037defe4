"""The writers scenario: a program inserts keys into a map while user-space
writers on every CPU update, delete and batch-delete keys of the same range
with bpf(2).

``bpf/writers.c`` has an inserter, a raw_tp program on ``sys_enter`` (this
process, getppid only) that inserts key ``counter % keys`` and times each
call, and a guard, a kprobe program on the map type's update function
(:data:`GUARD_TARGETS`) that only counts its runs, inside the writers and
elsewhere.  This process calls getppid() in a loop pinned to one CPU while
one writer process per CPU it may run on (:mod:`pybpfmap.stress.userspace`)
loops over the same keys: an update of each (BPF_ANY, timed), a delete of
every other one, one BPF_MAP_LOOKUP_AND_DELETE_BATCH and a GC pass.

* The key range is half as large again as the map (:func:`key_range`), so
  that the map fills whenever the inserts outrun the deletes: a full map's
  path (-E2BIG after the preallocated free list is searched on every CPU,
  the element counter, LRU eviction) is part of what writers meet.
* The program inserts with BPF_NOEXIST: each success is a new element taken
  from the allocator (the path concurrent writers contend on), a key that is
  there already costs only the look-up under the bucket lock (-EEXIST).
  User space updates with BPF_ANY, as a program's user usually does, so
  both paths run: replace an element, or insert one.
* A bpf(2) map op runs with bpf_prog_active raised (bpf_disable_instrumentation()
  in kernel/bpf/syscall.c), so the guard is skipped inside the writers'
  updates: its runs there must stay 0 (:func:`problems`), and its skips count
  in ``recursion_misses`` since Linux kernel commit dd8657894c11 ("bpf: Count
  missed stats in trace_call_bpf") (in v6.7).  Its runs elsewhere (inside the
  program's inserts: raw_tp programs do not raise bpf_prog_active) show that
  it is attached.  It never updates a map: inside the inserter's update, that
  would be the re-entry scenario's deadlock on 5.10.
* User space's update latency is perf_counter_ns() around the call as Python
  makes it (ctypes included), sampled and merged as
  :mod:`pybpfmap.stress.userspace` says.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from pybpfmap import procs, tracefs
from pybpfmap.guest import mark
from pybpfmap.kernel import Kernel
from pybpfmap.loader import bcc_program, map_fd
from pybpfmap.maps import MapSpec
from pybpfmap.stress import watch, workloads
from pybpfmap.stress.allocator import (
    NERRNO,
    bpf_stats,
    cpu_sum,
    prog_stats,
    result_counts,
    timed_latency,
)
from pybpfmap.stress.kinds import MapKind
from pybpfmap.stress.latency import NSLOTS
from pybpfmap.stress.probes import KPROBE, RAW_TP, XDP
from pybpfmap.stress.records import ProbeStats, StressRow
from pybpfmap.stress.reentry import SYSCALL, calls, calls_for, syscall_nr
from pybpfmap.stress.userspace import MAX_SAMPLES, OPS, Reservoir, user_latency, writer_procs

NAME = "writers"
TRIAL_CALLS = 200       # calls to see the guard run inside the program's inserts
# The update function a program's update and a bpf(2) update of each map type
# both call (kernel/bpf/hashtab.c: the map's ops, and bpf_percpu_hash_update()
# for the per-CPU types), in the order to try them; static ones may be inlined.
GUARD_TARGETS = {
    "hash": ("htab_map_update_elem",),
    "lru_hash": ("htab_lru_map_update_elem",),
    "percpu_hash": ("htab_map_update_elem_in_place", "__htab_percpu_map_update_elem"),
    "lru_percpu_hash": ("__htab_lru_percpu_map_update_elem",),
}


def key_range(spec: MapSpec) -> int:
    """How many keys the row's program and writers share: half as many again
    as the map holds, so that it fills."""
    return spec.max_entries + spec.max_entries // 2


# --- the programs ---------------------------------------------------------------------

@dataclass
class Loaded:
    bpf: object
    inserter_fd: int
    map_fd: int
    xdp: object          # the softirq inserter, BCC's function (what attach_xdp takes)


@contextmanager
def loaded(kind: MapKind, keys: int, writers: int) -> Iterator[Loaded]:
    """bpf/writers.c on the row's map; BCC attaches the inserter at load (only
    this process's getppid() runs it), the guard is loaded when attached."""
    cflags = [f"-DPID={os.getpid()}", f"-DNR={syscall_nr(SYSCALL)}", f"-DNERRNO={NERRNO}",
              f"-DNSLOTS={NSLOTS}", f"-DKEYS={keys}", f"-DMAX_WRITERS={max(writers, 1)}"]
    with bcc_program("writers.c", maps={"MAP": kind.spec}, cflags=cflags) as bpf:
        fd = bpf.load_func(b"raw_tracepoint__sys_enter", RAW_TP.prog_type()).fd
        xdp = bpf.load_func(b"xdp_inserter", XDP.prog_type())
        yield Loaded(bpf, fd, map_fd(bpf, "MAP"), xdp)


@dataclass
class Guard:
    target: str
    fd: int
    event: str | None


def _guard_runs(ld: Loaded, slot: int) -> int:
    return cpu_sum(ld.bpf[b"guard_runs"], slot)


def attach_guard(stack: ExitStack, ld: Loaded, kind: MapKind, k: Kernel
                 ) -> tuple[Guard | None, str, int]:
    """The guard on the first of the map type's update functions that runs
    inside the program's inserts here (tried with :data:`TRIAL_CALLS`
    getppid() calls each), attached until ``stack`` closes, else None; why
    not (or which were passed over), and the calls the trials made."""
    if not k.kprobes:
        return None, f"no guard kprobe: {k.kprobes_reason}", 0
    wanted = GUARD_TARGETS[kind.spec.type]
    traceable = tracefs.traceable_functions()
    ok = [t for t in wanted if traceable is None or t in traceable]
    if not ok:
        return None, (f"no guard kprobe: {', '.join(wanted)} cannot take one here (not in "
                      f"{tracefs.FILTER_FUNCTIONS}: inlined or notrace)"), 0
    fd = KPROBE.load(ld.bpf, "update_guard", f"{kind.name} guard program")
    group = tracefs.unique_group()
    tried: list[str] = []
    for target in ok:
        with ExitStack() as trial:
            ev = KPROBE.attach(fd, target, group=group, tag="guard", events=trial, links=trial)
            before = _guard_runs(ld, 1)
            calls(TRIAL_CALLS)
            if _guard_runs(ld, 1) > before:
                stack.enter_context(trial.pop_all())
                note = (f"guard: {', '.join(tried)} never ran in the program's inserts here, "
                        f"{target} did" if tried else "")
                return Guard(target, fd, ev), note, TRIAL_CALLS * (len(tried) + 1)
            tried.append(target)
    return None, (f"no guard kprobe: {', '.join(tried)} never ran in the program's inserts "
                  "here (inlined into the update path)"), TRIAL_CALLS * len(tried)




# --- one row ------------------------------------------------------------------------------

def new_row(kind: MapKind) -> StressRow:
    return StressRow(NAME, kind.name, kind.spec.type, kind.spec.prealloc,
                     kind.spec.value_size, RAW_TP.name,
                     "raw_tp sys_enter + xdp (veth) + bpf(2) writers",
                     note=kind.note)


def problems(row: StressRow) -> list[str]:
    """What fails a measured writers row beyond the common checks: the guard
    ran inside a writer's bpf(2) update, where bpf_prog_active should have
    kept it out."""
    guard = row.workloads.get("guard") or {}
    n = guard.get("runs_in_writers")
    if not n:
        return []
    return [f"the guard kprobe on {guard['target']} ran {n}x inside the writers' bpf(2) "
            "updates: bpf_prog_active was not raised there"]


def run_row(kind: MapKind, k: Kernel, duration: float, inject) -> tuple[StressRow, str]:
    """One row of the writers scenario on ``kind``: the (not yet judged) row
    and the kernel log lines of its window."""
    row = new_row(kind)
    mark("row-start", row.label)
    with workloads.on_first_cpu() as cpus:
        return _run(row, kind, k, cpus, duration, inject)


def _run(row: StressRow, kind: MapKind, k: Kernel, cpus: list[int], duration: float,
         inject) -> tuple[StressRow, str]:
    keys = key_range(kind.spec)
    with ExitStack() as stack:
        pair = stack.enter_context(workloads.veth_pair())
        # forked before the programs load and the heartbeat thread starts
        traffic = stack.enter_context(workloads.started(duration, ("softirq",), pair))
        stack.enter_context(bpf_stats())
        kmsg = stack.enter_context(watch.kmsg_watch())
        ld = stack.enter_context(loaded(kind, keys, len(cpus)))
        stack.enter_context(workloads.xdp_attached(pair, ld.xdp))
        # Forked now, before the guard's kprobe is attached and the heartbeat
        # thread starts: the writers hold no perf fd, fork() happens single-threaded.
        ws = stack.enter_context(writer_procs(ld.map_fd, kind.spec, keys, cpus, duration))
        for pid in ws.pids:
            ld.bpf[b"writer_tgids"][ctypes.c_uint(pid)] = ctypes.c_uint(1)
        guard, why, tried_calls = attach_guard(stack, ld, kind, k)
        hb = stack.enter_context(watch.heartbeat())
        t0 = time.monotonic()
        mark("armed", row.label, f"{len(cpus)} writers")
        procs.tell_ready()  # programs attached, writers forked: what a Ctrl-C must undo
        with inject():
            ws.go()
            traffic.go()
            made = tried_calls + calls_for(duration)
            reports = ws.results()
            softirq = traffic.results()
        row.seconds = round(time.monotonic() - t0, 2)
        profile = tracefs.kprobe_profile([guard.event] if guard and guard.event else [])
        _read(row, ld, k, guard, profile, reports)
        row.heartbeat_max_delay_s = round(hb.max_delay_s, 4)
        kernel_log = kmsg.read_new()
    notes = [row.note, why, f"keys 0..{keys - 1} for {kind.spec.max_entries} entries",
             *sorted({f"no BPF_MAP_LOOKUP_AND_DELETE_BATCH here ({r['no_batch']}: counted "
                      "once a writer, not tried again)" for r in reports if r.get("no_batch")})]
    row.note = "; ".join(n for n in notes if n)
    row.events = row.per_probe[0].events
    row.errors = {op: errs for p in row.per_probe for op, errs in p.errors().items()}
    row.workloads["syscalls"] = {"name": SYSCALL, "calls": made}
    row.workloads["stressed"].update(softirq)
    mark("row-end", row.label)
    return row, kernel_log


def _read(row: StressRow, ld: Loaded, k: Kernel, guard: Guard | None, profile: dict,
          reports: list[dict]) -> None:
    """The programs' counters and the writers' reports into ``row.per_probe``
    and ``row.workloads``."""
    release = k.kernel_release
    row.per_probe = []
    for side, (probe, kind, op, fd) in enumerate((
            (f"sys_enter ({SYSCALL})", RAW_TP, "insert", ld.inserter_fd),
            ("veth softirq (generic XDP)", XDP, "softirq insert", ld.xdp.fd))):
        inserts = result_counts(ld.bpf[b"insert_counts"], side * NERRNO)
        lat = timed_latency(ld.bpf[b"insert_lat"], ld.bpf[b"insert_max"], side)
        row.per_probe.append(ProbeStats(probe, kind.name, sum(inserts.values()),
                                        {op: inserts}, **prog_stats(fd, kind, release),
                                        latency=lat))
    if guard is not None:
        inside, elsewhere = _guard_runs(ld, 0), _guard_runs(ld, 1)
        prof = profile.get(guard.event)
        stats = prog_stats(guard.fd, KPROBE, release)
        row.per_probe.append(ProbeStats(
            guard.target, KPROBE.name, inside + elsewhere, {}, **stats,
            kprobe_hits=prof.hits if prof else None,
            kprobe_nmissed=prof.nmissed if prof else None))
        # kprobe hits whose program trace_call_bpf() skipped (bpf_prog_active
        # raised): the writers' updates, and any other bpf(2) update meanwhile
        row.workloads["guard"] = {"target": guard.target, "runs_in_writers": inside,
                                  "runs_elsewhere": elsewhere,
                                  "skipped": prof.hits - inside - elsewhere if prof else None,
                                  "recursion_misses": stats["recursion_misses"]}
        row.probe = f"raw_tp sys_enter + xdp (veth) + kprobe {guard.target} + bpf(2) writers"
    results: dict[str, dict[str, int]] = {f"user {op}": {} for op in OPS}
    stressed, parts = {}, []
    for r in reports:
        name = f"writer cpu{r['cpu']}"
        if r.get("error"):
            stressed[name] = {"pid": r["pid"], "ops": 0, "error": r["error"]}
            continue
        for op, res in r["results"].items():
            for err, n in res.items():
                results[op][err] = results[op].get(err, 0) + n
        ops = {op.removeprefix("user "): sum(res.values()) for op, res in r["results"].items()}
        total = sum(ops.values())
        stressed[name] = {"pid": r["pid"], "ops": total, **ops, "rounds": r["rounds"],
                          "batch_moved": r["batch_moved"], "seconds": r["seconds"],
                          "ops_per_s": round(total / r["seconds"], 1) if r["seconds"] else 0.0}
        lat_r = r["latency"]
        parts.append(Reservoir(MAX_SAMPLES, lat_r["seen"], lat_r["max_ns"], lat_r["samples"]))
    row.per_probe.append(ProbeStats(
        f"{len(reports)} writer processes", "syscall",
        sum(n for res in results.values() for n in res.values()), results,
        latency=user_latency(parts)))
    row.workloads["stressed"] = stressed
