"""The NMI scenarios: map updates in NMI context while a program of the same
map holds its bucket lock.

``bpf/nmi.c`` has two holders that update and delete key K — a raw_tp program
on ``sys_enter`` (this process, getppid only) and a generic XDP program on the
veth workload's traffic (the NET_RX softirq) — and a tracepoint program on
``nmi:nmi_handler``, which runs in NMI context and updates a key of the same
map, timing the call.  This process calls getppid() in a loop, pinned to one
CPU, while the host injects NMIs into every vCPU (QMP ``inject-nmi``, asked
for over the control port: :func:`pybpfmap.guest.request_nmis`), so some NMIs
land while the holder is inside its update.  What those NMI updates get is the
measurement: an AA deadlock (5.10: CPU stuck in NMI context), -EBUSY
(map_locked), -EDEADLK or -ETIMEDOUT (the resilient lock), with how long each
took.

Two scenarios: ``nmi`` (the NMI updates key K itself) and ``nmi-slot`` (a
key in K's bucket whose map_locked counter differs, in a map of 4 entries
created with BPF_F_ZERO_SEED so that the bucket is known:
:func:`pybpfmap.htab.other_slot_key`) — the deadlock that Linux kernel commit
9f907439dc80 ("bpf: hash map, avoid deadlock with suitable hash mask") closed.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from pybpfmap import guest, htab, procs
from pybpfmap.guest import mark
from pybpfmap.kernel import Kernel
from pybpfmap.loader import bcc_program
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
from pybpfmap.stress.probes import RAW_TP, TRACEPOINT_NMI, XDP
from pybpfmap.stress.records import SKIPPED, ProbeStats, StressRow
from pybpfmap.stress.reentry import BATCH, SYSCALL, calls, calls_for, syscall_nr

NAME, SLOT_NAME = "nmi", "nmi-slot"
HOLD_KEY = 1
SLOT_MAX_ENTRIES = 4          # 4 buckets: fewer than the 8 map_locked counters
DEFAULT_RATE = 1000.0         # NMIs a second into every vCPU
FIRST_NMI_S = 5.0             # how long to wait for the first NMI to arrive


@dataclass(frozen=True)
class Keys:
    """The holder's key and the NMI program's, and the map they are in."""

    kind: MapKind
    hold: int
    nmi: int
    note: str = ""


def keys_for(kind: MapKind, other_slot: bool) -> Keys:
    """The row's map and keys: the same key, or (``other_slot``) one in the
    holder's bucket on another map_locked counter."""
    if not other_slot:
        return Keys(kind, HOLD_KEY, HOLD_KEY)
    spec = replace(kind.spec, max_entries=SLOT_MAX_ENTRIES,
                   extra_flags=kind.spec.extra_flags | htab.F_ZERO_SEED)
    key = htab.other_slot_key(HOLD_KEY, SLOT_MAX_ENTRIES, spec.key_size)

    def where(n: int) -> str:
        h = htab.key_hash(n.to_bytes(spec.key_size, "little"))
        return (f"key {n}: bucket {htab.bucket(h, spec.max_entries)}, slot "
                f"{htab.lock_slot(h, spec.max_entries, False)}")

    note = (f"{SLOT_MAX_ENTRIES} entries, BPF_F_ZERO_SEED; holder {where(HOLD_KEY)}, NMI "
            f"{where(key)} (slots as before the hash-mask fix; one slot after it)")
    return Keys(MapKind(kind.name, spec, kind.note), HOLD_KEY, key, note)


@dataclass
class Loaded:
    bpf: object
    nmi_fd: int
    holder_fd: int
    xdp: object          # BCC's function (what attach_xdp takes)


@contextmanager
def loaded(keys: Keys) -> Iterator[Loaded]:
    """bpf/nmi.c on the row's map; BCC attaches both programs at load (the NMI
    program does nothing until armed, the holder only for this process)."""
    cflags = [f"-DPID={os.getpid()}", f"-DNR={syscall_nr(SYSCALL)}", f"-DNERRNO={NERRNO}",
              f"-DNSLOTS={NSLOTS}", f"-DHOLD_KEY={keys.hold}", f"-DNMI_KEY={keys.nmi}"]
    with bcc_program("nmi.c", maps={"MAP": keys.kind.spec}, cflags=cflags) as bpf:
        nmi_fd = bpf.load_func(b"tracepoint__nmi__nmi_handler", TRACEPOINT_NMI.prog_type()).fd
        holder_fd = bpf.load_func(b"raw_tracepoint__sys_enter", RAW_TP.prog_type()).fd
        xdp = bpf.load_func(b"xdp_holder", XDP.prog_type())
        yield Loaded(bpf, nmi_fd, holder_fd, xdp)


def _set_armed(ld: Loaded, on: bool) -> None:
    ld.bpf[b"armed"][ctypes.c_int(0)] = ctypes.c_uint(1 if on else 0)


@contextmanager
def _nmis(ld: Loaded, rate: float) -> Iterator[None]:
    """The NMI program armed and the host injecting ``rate`` NMIs a second;
    both undone on the way out."""
    _set_armed(ld, True)
    guest.request_nmis(rate)
    try:
        yield
    finally:
        guest.request_nmis(0)
        _set_armed(ld, False)


def new_row(name: str, kind: MapKind) -> StressRow:
    return StressRow(name, kind.name, kind.spec.type, kind.spec.prealloc,
                     kind.spec.value_size, TRACEPOINT_NMI.name,
                     "raw_tp sys_enter + xdp (veth) + tracepoint nmi:nmi_handler",
                     note=kind.note)


def run_row(name: str, kind: MapKind, k: Kernel, duration: float, rate: float,
            inject) -> tuple[StressRow, str]:
    """One row of an NMI scenario on ``kind``: the (not yet judged) row and the
    kernel log lines of its window."""
    row = new_row(name, kind)
    why = guest.nmi_unavailable()
    if why:
        row.outcome, row.reasons = SKIPPED, [why]
        return row, ""
    keys = keys_for(kind, name == SLOT_NAME)
    if keys.note:
        row.note = f"{row.note}; {keys.note}" if row.note else keys.note
    mark("row-start", row.label)
    with workloads.on_first_cpu():
        return _run(row, keys, k, duration, rate, inject)


def _run(row: StressRow, keys: Keys, k: Kernel, duration: float, rate: float,
         inject) -> tuple[StressRow, str]:
    made = 0
    with ExitStack() as stack:
        pair = stack.enter_context(workloads.veth_pair())
        # forked before the programs load and the heartbeat thread starts
        traffic = stack.enter_context(workloads.started(duration, ("softirq",), pair))
        stack.enter_context(bpf_stats())
        kmsg = stack.enter_context(watch.kmsg_watch())
        ld = stack.enter_context(loaded(keys))
        stack.enter_context(workloads.xdp_attached(pair, ld.xdp))
        hb = stack.enter_context(watch.heartbeat())
        runs = ld.bpf[b"nmi_runs"]
        t0 = time.monotonic()
        mark("armed", row.label, f"nmi {rate:g}/s")
        with _nmis(ld, rate):
            procs.tell_ready()  # programs attached, NMIs coming: what a Ctrl-C must undo
            first = time.monotonic() + FIRST_NMI_S
            while not cpu_sum(runs, 0) and time.monotonic() < first:
                calls(BATCH)
                made += BATCH
            if not cpu_sum(runs, 0):
                row.outcome = SKIPPED
                row.reasons = [f"no NMI reached the nmi:nmi_handler program within "
                               f"{FIRST_NMI_S:g} s of asking the host for {rate:g} a second"]
                return row, kmsg.read_new()
            with inject():
                traffic.go()
                made += calls_for(duration)
                softirq = traffic.results()
        row.seconds = round(time.monotonic() - t0, 2)
        inside = _read(row, ld, k)
        row.heartbeat_max_delay_s = round(hb.max_delay_s, 4)
        kernel_log = kmsg.read_new()
    row.events = row.per_probe[-1].events
    row.errors = {op: errs for p in row.per_probe for op, errs in p.errors().items()}
    row.workloads = {"syscalls": {"name": SYSCALL, "calls": made}, "stressed": softirq,
                     "nmi": {"rate_asked": rate, "program_runs": row.events,
                             "inside_holder": inside}}
    mark("row-end", row.label)
    return row, kernel_log


def _read(row: StressRow, ld: Loaded, k: Kernel) -> dict[str, int]:
    """The programs' counters into ``row.per_probe`` (the holders, then the NMI
    program); the results of the NMI updates that landed while a holder was
    inside its update or delete."""
    holder = result_counts(ld.bpf[b"holder_counts"])
    xdp = result_counts(ld.bpf[b"xdp_counts"])
    nmi = result_counts(ld.bpf[b"nmi_counts"])
    lat = timed_latency(ld.bpf[b"nmi_lat"], ld.bpf[b"nmi_max"])
    row.per_probe = [
        ProbeStats(f"sys_enter ({SYSCALL})", RAW_TP.name, sum(holder.values()),
                   {"update": holder}, **prog_stats(ld.holder_fd, RAW_TP, k.kernel_release)),
        ProbeStats("veth softirq (generic XDP)", XDP.name, sum(xdp.values()),
                   {"softirq update": xdp}, **prog_stats(ld.xdp.fd, XDP, k.kernel_release)),
        ProbeStats("nmi:nmi_handler", TRACEPOINT_NMI.name, cpu_sum(ld.bpf[b"nmi_runs"], 0),
                   {"nmi update": nmi},
                   **prog_stats(ld.nmi_fd, TRACEPOINT_NMI, k.kernel_release), latency=lat),
    ]
    return result_counts(ld.bpf[b"nmi_inside"])
