"""The BPF side of ``pybpfmap stress``: which maps, which probes, the load
of ``bpf/stress.c``, attaching it, and reading back what it counted.

A *probe* is one attach point: a kprobe on a spin_unlock function, or (the
weaker variant, for kernels without kprobes) a tracepoint on a lock or
allocation path.  Every probe runs the same handler, which does update ->
lookup -> delete on each selected map and counts each result per errno.

Kprobes are created through ``kprobe_events`` (not BCC's perf-PMU path) so
that the kernel's own ``nmissed`` for each probe is readable in
``kprobe_profile``; the program is attached to the event with
``perf_event_open`` + ``PERF_EVENT_IOC_SET_BPF`` (libbcc's
``bpf_attach_tracepoint``).  Every attach is a context manager: closing the
perf fd detaches the program, removing the event removes the kprobe.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from pybpfmap import bpfsys
from pybpfmap.errors import EnvironmentProblem, KernelError, UsageError, errno_name
from pybpfmap.headers import TRACEFS
from pybpfmap.loader import bcc_program
from pybpfmap.maps import MapSpec

# The six maps of bpf/stress.c, in counter order: (C name, spec).
# LRU types are preallocated only: the kernel refuses BPF_F_NO_PREALLOC for them.
MAPS: tuple[tuple[str, MapSpec], ...] = (
    ("HP", MapSpec("hash", True, 4, 8, 1024)),
    ("HN", MapSpec("hash", False, 4, 8, 1024)),
    ("PP", MapSpec("percpu_hash", True, 4, 8, 1024)),
    ("PN", MapSpec("percpu_hash", False, 4, 8, 1024)),
    ("LP", MapSpec("lru_hash", True, 4, 8, 1024)),
    ("LQ", MapSpec("lru_percpu_hash", True, 4, 8, 1024)),
)
OPS = ("update", "lookup", "delete")
# Result slots of the per-CPU counter array, as in slot_of() in bpf/stress.c.
SLOTS: tuple[int | None, ...] = (
    0, errno.ENOENT, errno.EBUSY, errno.EDEADLK, errno.ETIMEDOUT, errno.ENOMEM,
    errno.E2BIG, errno.EEXIST, errno.EINVAL, errno.EAGAIN, 524, None,
)
NPROBES = 4  # on_probe0 .. on_probe3 in bpf/stress.c

# The weaker variant: tracepoints on lock contention and on kmalloc/kfree.
TRACEPOINTS = ("lock:contention_begin", "lock:contention_end", "kmem:kmalloc", "kmem:kfree")

KPROBE_EVENTS = os.path.join(TRACEFS, "kprobe_events")
KPROBE_PROFILE = os.path.join(TRACEFS, "kprobe_profile")


@dataclass(frozen=True)
class Probe:
    """One attach point: ``kind`` is "kprobe" (target a function) or
    "tracepoint" (target "category:name")."""

    kind: str
    target: str


def select_maps(types: Sequence[str] | None) -> list[tuple[int, str, MapSpec]]:
    """(index, C name, spec) of the maps to exercise.  ``types`` holds map
    types ("hash": both modes) or labels ("hash/no_prealloc")."""
    chosen = []
    wanted = set(types or ())
    known = {s.type for _, s in MAPS} | {s.label for _, s in MAPS}
    for t in wanted - known:
        raise UsageError("--types", f"{t!r} is not one of {', '.join(sorted(known))} "
                         "(LRU maps exist preallocated only)")
    for i, (name, spec) in enumerate(MAPS):
        if not wanted or spec.type in wanted or spec.label in wanted:
            chosen.append((i, name, spec))
    return chosen


def tracepoints_available(names: Sequence[str] = TRACEPOINTS) -> tuple[list[str], dict[str, str]]:
    """Which tracepoints exist in tracefs here, and why the others cannot be used."""
    ok, why = [], {}
    for tp in names:
        cat, _, name = tp.partition(":")
        if os.path.exists(os.path.join(TRACEFS, "events", cat, name, "id")):
            ok.append(tp)
        else:
            why[tp] = f"no {TRACEFS}/events/{cat}/{name} (tracepoint not built into this kernel)"
    return ok, why


def _write_tracefs(path: str, line: str) -> None:
    """Append one command line.  Not Python's open(path, "a"): that seeks to
    the end, which kprobe_events refuses with EINVAL when opened write-only;
    and O_TRUNC would delete every kprobe on the system."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@contextmanager
def kprobe_event(group: str, event: str, symbol: str) -> Iterator[None]:
    """A kprobe on ``symbol`` as tracefs event ``group/event``, removed on exit
    (ENOENT tolerated: the event may already be gone)."""
    try:
        _write_tracefs(KPROBE_EVENTS, f"p:{group}/{event} {symbol}")
    except OSError as e:
        raise KernelError(f"kprobe {symbol}", e.errno or 0,
                          f"the kernel refused a kprobe here (writing {KPROBE_EVENTS})") \
            from None
    try:
        yield
    finally:
        _remove_kprobe_event(group, event, symbol)


def _remove_kprobe_event(group: str, event: str, symbol: str, wait: float = 5.0) -> None:
    """Remove ``group/event``.  EBUSY means a perf event on it is still open
    (a child process that inherited the fd is exiting): retry for ``wait``
    seconds.  ENOENT (already gone) is fine."""
    deadline = time.monotonic() + wait
    while True:
        try:
            _write_tracefs(KPROBE_EVENTS, f"-:{group}/{event}")
            return
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise KernelError(f"kprobe {symbol}", e.errno or 0,
                                  f"could not remove kprobe event {group}/{event}; remove "
                                  f"it with: echo '-:{group}/{event}' >> {KPROBE_EVENTS}") \
                    from None
            time.sleep(0.1)


@contextmanager
def attached(prog_fd: int, category: str, name: str) -> Iterator[int]:
    """Attach program ``prog_fd`` to tracefs event ``category/name`` (a
    tracepoint, or a kprobe made by :func:`kprobe_event`); detach on exit."""
    from bcc import libbcc

    pfd = libbcc.lib.bpf_attach_tracepoint(prog_fd, category.encode(), name.encode())
    if pfd < 0:
        raise KernelError(f"{category}:{name}", -pfd if pfd < -1 else errno.EINVAL,
                          "could not attach the program (perf_event_open/"
                          "PERF_EVENT_IOC_SET_BPF); see stderr")
    try:
        yield pfd
    finally:
        libbcc.lib.bpf_close_perf_event_fd(pfd)


@dataclass
class Loaded:
    """The loaded stress program and its attached probes."""

    bpf: object
    maps: list[tuple[int, str, MapSpec]]
    probes: list[Probe]
    prog_fds: dict[Probe, int] = field(default_factory=dict)
    kprobe_events: dict[Probe, str] = field(default_factory=dict)  # probe -> event name
    attachments: ExitStack = field(default_factory=ExitStack)

    def detach(self) -> None:
        """Detach every program now (idempotent); the maps and kprobe_profile
        stay readable until the program is unloaded."""
        self.attachments.close()


def cflags(maps: Sequence[tuple[int, str, MapSpec]]) -> list[str]:
    used = {name for _, name, _ in maps}
    return [f"-DUSE_{name}={1 if name in used else 0}" for name, _ in MAPS]


@contextmanager
def loaded(probes: Sequence[Probe], maps: Sequence[tuple[int, str, MapSpec]]
           ) -> Iterator[Loaded]:
    """Load bpf/stress.c with the chosen maps and attach one handler per
    probe; everything is detached, unloaded and removed on exit."""
    if len(probes) > NPROBES:
        raise UsageError("--probes", f"at most {NPROBES} probes at once")
    if not probes:
        raise UsageError("--probes", "no probe to attach")
    from bcc import BPF

    with ExitStack() as stack:
        bpf = stack.enter_context(bcc_program("stress.c", maps=dict(MAPS),
                                              cflags=cflags(maps)))
        out = Loaded(bpf, list(maps), list(probes))
        # kprobe events outlive the attachments (closed first on unwind), so
        # that kprobe_profile can be read after detach(), with final counts.
        events = stack.enter_context(ExitStack())
        attach = stack.enter_context(out.attachments)
        group = f"pybpfmap_{uuid.uuid4().hex[:8]}"
        for i, probe in enumerate(probes):
            fn_name = f"on_probe{i}".encode()
            if probe.kind == "kprobe":
                fn = bpf.load_func(fn_name, BPF.KPROBE)
                event = f"p{i}_{probe.target.lstrip('_')}"[:60]
                events.enter_context(kprobe_event(group, event, probe.target))
                attach.enter_context(attached(fn.fd, group, event))
                out.kprobe_events[probe] = event
            elif probe.kind == "tracepoint":
                fn = bpf.load_func(fn_name, BPF.TRACEPOINT)
                cat, _, name = probe.target.partition(":")
                attach.enter_context(attached(fn.fd, cat, name))
            else:
                raise UsageError("--probes", f"unknown probe kind {probe.kind!r}")
            out.prog_fds[probe] = fn.fd
        yield out


def read_counts(ld: Loaded) -> dict[tuple[int, int], dict[str, dict[str, int]]]:
    """{(probe index, map index): {op: {result: count}}}, summed over CPUs.
    Results are "ok" or an errno name; an errno outside the known slots is
    named from ``other_errno``."""
    counts = ld.bpf[b"stress_counts"]
    other = ld.bpf[b"stress_errno"]
    out: dict[tuple[int, int], dict[str, dict[str, int]]] = {}
    nslots = len(SLOTS)
    for p in range(len(ld.probes)):
        for m, _, _ in ld.maps:
            row: dict[str, dict[str, int]] = {}
            for o, op in enumerate(OPS):
                base = ((p * len(MAPS) + m) * len(OPS) + o) * nslots
                res: dict[str, int] = {}
                for s, err in enumerate(SLOTS):
                    n = sum(v for v in counts[ctypes.c_int(base + s)])
                    if not n:
                        continue
                    if err == 0:
                        key = "ok"
                    elif err is None:
                        last = other[ctypes.c_int((p * len(MAPS) + m) * len(OPS) + o)].value
                        key = errno_name(-last) if last else "other"
                    else:
                        key = errno_name(err)
                    res[key] = res.get(key, 0) + n
                row[op] = res
            out[(p, m)] = row
    return out


def prog_stats(ld: Loaded) -> dict[Probe, dict]:
    """run_cnt, run_time_ns and recursion_misses of each attached program
    (bpf_prog_info; run_* count only while stats are enabled)."""
    out = {}
    for probe, fd in ld.prog_fds.items():
        info, has_misses = bpfsys.prog_info(fd)
        out[probe] = {"prog_id": info.id, "run_cnt": info.run_cnt,
                      "run_time_ns": info.run_time_ns,
                      "recursion_misses": info.recursion_misses if has_misses else None}
    return out


def kprobe_profile(events: dict[Probe, str]) -> dict[Probe, dict]:
    """hits and nmissed of our kprobe events, from tracefs kprobe_profile.

    nmissed counts hits that kprobes itself skipped because a kprobe handler
    was already running on that CPU: our program's own map ops take and
    release spinlocks, so the unlock kprobe re-fires inside it and is
    skipped here, before BPF is reached.  Skips one level up (bpf_prog_active,
    another BPF program already running) show in recursion_misses since
    Linux kernel commit dd8657894c11 ("bpf: Count missed stats in
    trace_call_bpf") (in v6.7)."""
    if not events:
        return {}
    try:
        with open(KPROBE_PROFILE) as f:
            text = f.read()
    except OSError as e:
        raise EnvironmentProblem(KPROBE_PROFILE, "cannot read kprobe hit/miss counts",
                                 e.errno) from None
    by_name = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            by_name[parts[0]] = (int(parts[1]), int(parts[2]))
    out = {}
    for probe, event in events.items():
        hits, missed = by_name.get(event, (None, None))
        out[probe] = {"hits": hits, "nmissed": missed}
    return out


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
