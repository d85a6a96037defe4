"""tracefs: mounting it, kprobe events, their hit/miss counts, and event lookups.

Kprobes are created through ``kprobe_events`` (not BCC's perf-PMU path) so
that the kernel's own ``nmissed`` for each probe is readable in
``kprobe_profile``; a program is attached to an event with
``perf_event_open`` + ``PERF_EVENT_IOC_SET_BPF`` (libbcc's
``bpf_attach_tracepoint``).  Every kprobe and every attachment is a context
manager: closing the perf fd detaches the program, leaving the block removes
the kprobe.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pybpfmap.errors import EnvironmentProblem, KernelError
from pybpfmap.procs import wait_until

TRACEFS = "/sys/kernel/tracing"
KPROBE_EVENTS = os.path.join(TRACEFS, "kprobe_events")
KPROBE_PROFILE = os.path.join(TRACEFS, "kprobe_profile")
FILTER_FUNCTIONS = os.path.join(TRACEFS, "available_filter_functions")


def ensure_tracefs(log=sys.stderr) -> str:
    """Mount tracefs at /sys/kernel/tracing if it is not there; return its path."""
    if os.path.exists(os.path.join(TRACEFS, "trace")):
        return TRACEFS
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise EnvironmentProblem("tracefs", f"cannot mount tracefs at {TRACEFS}", err)
    print(f"pybpfmap: mounted tracefs at {TRACEFS}", file=log)
    return TRACEFS


def mounted() -> bool:
    return os.path.exists(os.path.join(TRACEFS, "trace"))


def event_exists(category: str, name: str) -> bool:
    """Whether tracepoint (or kprobe event) ``category:name`` exists here."""
    return os.path.exists(os.path.join(TRACEFS, "events", category, name, "id"))


def traceable_functions() -> set[str] | None:
    """The functions ftrace (and so a kprobe on their entry) can trace here, or
    None without ``available_filter_functions``."""
    try:
        with open(FILTER_FUNCTIONS) as f:
            return {line.split()[0] for line in f if line.strip()}
    except OSError:
        return None


def _append(path: str, line: str) -> None:
    """Append one command line.  Not Python's open(path, "a"): that seeks to
    the end, which kprobe_events refuses with EINVAL when opened write-only;
    and O_TRUNC would delete every kprobe on the system."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def unique_group() -> str:
    """A kprobe event group no one else uses."""
    return f"pybpfmap_{uuid.uuid4().hex[:8]}"


def unique_event(prefix: str, symbol: str) -> str:
    """An event name no one else uses.  kprobe_profile rows show the event name
    without its group, so the name itself must be unique on the system."""
    return f"{prefix}_{uuid.uuid4().hex[:6]}_{symbol.lstrip('_')}"[:60]


@dataclass(frozen=True)
class KprobeEvent:
    """A kprobe created through kprobe_events."""

    group: str
    event: str
    symbol: str


@contextmanager
def kprobe_event(group: str, event: str, symbol: str) -> Iterator[KprobeEvent]:
    """A kprobe on ``symbol`` as tracefs event ``group/event``, removed on exit
    (ENOENT tolerated: the event may already be gone)."""
    try:
        _append(KPROBE_EVENTS, f"p:{group}/{event} {symbol}")
    except OSError as e:
        raise KernelError(f"kprobe {symbol}", e.errno or 0,
                          f"the kernel refused a kprobe here (writing {KPROBE_EVENTS})") \
            from None
    try:
        yield KprobeEvent(group, event, symbol)
    finally:
        _remove_kprobe_event(group, event, symbol)


def _remove_kprobe_event(group: str, event: str, symbol: str, wait: float = 5.0) -> None:
    """Remove ``group/event``.  EBUSY means a perf event on it is still open
    (a child process that inherited the fd is exiting): retry for ``wait``
    seconds.  ENOENT (already gone) is fine."""
    def removed() -> bool:
        try:
            _append(KPROBE_EVENTS, f"-:{group}/{event}")
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            if e.errno != errno.ENOENT:
                raise _cannot_remove(group, event, symbol, e.errno or 0) from None
        return True

    if not wait_until(removed, wait, 0.1):
        raise _cannot_remove(group, event, symbol, errno.EBUSY)


def _cannot_remove(group: str, event: str, symbol: str, err: int) -> KernelError:
    return KernelError(f"kprobe {symbol}", err,
                       f"could not remove kprobe event {group}/{event}; remove it with: "
                       f"echo '-:{group}/{event}' >> {KPROBE_EVENTS}")


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


@dataclass(frozen=True)
class ProbeCounts:
    """One kprobe event's row of kprobe_profile."""

    hits: int
    nmissed: int


def kprobe_profile(events: list[str]) -> dict[str, ProbeCounts]:
    """hits and nmissed of kprobe events (by event name), from kprobe_profile.

    ``nmissed`` counts hits that kprobes itself skipped because a kprobe
    handler was already running on that CPU: a program's own map ops take and
    release spinlocks, so an unlock kprobe re-fires inside it and is skipped
    there, before BPF is reached."""
    if not events:
        return {}
    try:
        with open(KPROBE_PROFILE) as f:
            text = f.read()
    except OSError as e:
        raise EnvironmentProblem(KPROBE_PROFILE, "cannot read kprobe hit/miss counts",
                                 e.errno) from None
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            rows[parts[0]] = ProbeCounts(int(parts[1]), int(parts[2]))
    return {e: rows[e] for e in events if e in rows}
