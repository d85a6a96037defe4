"""What runs the syscall mode's program on every getuid(): one :class:`Trigger` each.

A trigger knows the BPF program type ``trig_*`` must be loaded as, how BCC
attaches and detaches it, the ``-D`` flags bpf/bench_triple.c needs for it,
what it requires of the kernel (:meth:`Trigger.missing`), and whether this
kernel counts the program's skipped runs in ``recursion_misses``.
:data:`TRIGGERS` lists them in the order ``--trigger auto`` tries them:
a kprobe on the syscall's entry function (samples/bpf/map_perf_test's way),
the syscall's tracepoint, the ``sys_enter`` raw tracepoint.
"""

from __future__ import annotations

import abc
import os

from pybpfmap import era, kfacts
from pybpfmap.commits import MISSED_STATS, RAW_TP_GUARD
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.kernel import kprobes_available
from pybpfmap.tracefs import TRACEFS

SYSCALL = "getuid"
SYSCALL_TP = f"syscalls:sys_enter_{SYSCALL}"


class Trigger(abc.ABC):
    """A kprobe or tracepoint trigger on :data:`SYSCALL`; the base is their
    common part (trace_call_bpf(): skipped runs counted since MISSED_STATS)."""

    name: str
    prog_type: str   # the program type's name in BCC's ``BPF`` class
    because: str     # why one would pick it first

    def missing(self) -> str | None:
        """Why this kernel cannot run it (None: it can)."""
        return None

    @abc.abstractmethod
    def attach(self, bpf, fn: bytes) -> None:
        """Put the program ``fn`` of the BCC object ``bpf`` on the syscall."""

    @abc.abstractmethod
    def detach(self, bpf) -> None:
        """Take it off again."""

    def cflags(self) -> list[str]:
        """bench_triple.c's -D defines for this trigger."""
        return []

    def misses(self, release: str) -> tuple[bool, str]:
        """Whether ``release`` counts this program's skipped runs in
        ``recursion_misses``, and the note that says so with its commit."""
        if era.kprobe_recursion_misses_counted(kfacts.for_release(release)):
            return True, f"counted ({MISSED_STATS.cite()})"
        return False, f"not counted for {self.name} programs before {MISSED_STATS.cite()}"

    def __str__(self) -> str:
        return self.name


class Kprobe(Trigger):
    name = "kprobe"
    prog_type = "KPROBE"
    because = "as samples/bpf/map_perf_test"

    def missing(self) -> str | None:
        ok, why = kprobes_available()
        return None if ok else f"no kprobes ({why})"

    def attach(self, bpf, fn: bytes) -> None:
        bpf.attach_kprobe(event=bpf.get_syscall_fnname(SYSCALL), fn_name=fn)

    def detach(self, bpf) -> None:
        bpf.detach_kprobe(event=bpf.get_syscall_fnname(SYSCALL))


class Tracepoint(Trigger):
    name = "tracepoint"
    prog_type = "TRACEPOINT"
    because = "a stable syscall tracepoint"

    def missing(self) -> str | None:
        if os.path.isdir(os.path.join(TRACEFS, "events", *SYSCALL_TP.split(":"))):
            return None
        return (f"no {SYSCALL_TP} in {TRACEFS}/events (kernel without "
                "CONFIG_FTRACE_SYSCALLS?)")

    def attach(self, bpf, fn: bytes) -> None:
        bpf.attach_tracepoint(tp=SYSCALL_TP.encode(), fn_name=fn)

    def detach(self, bpf) -> None:
        bpf.detach_tracepoint(tp=SYSCALL_TP.encode())


class RawTracepoint(Trigger):
    """``sys_enter``: every syscall; the program keeps only :data:`SYSCALL`'s
    number (``TRIGGER_RAW_TP_NR``)."""

    name = "raw_tp"
    prog_type = "RAW_TRACEPOINT"
    because = "needs neither kprobes nor syscall tracepoints"

    def attach(self, bpf, fn: bytes) -> None:
        bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=fn)

    def detach(self, bpf) -> None:
        bpf.detach_raw_tracepoint(tp=b"sys_enter")

    def cflags(self) -> list[str]:
        return [f"-DTRIGGER_RAW_TP_NR={syscall_nr(SYSCALL)}"]

    def misses(self, release: str) -> tuple[bool, str]:
        if kfacts.for_release(release).has(RAW_TP_GUARD):
            return True, f"counted (raw_tp recursion guard: {RAW_TP_GUARD.cite()})"
        return False, f"not counted: no raw_tp recursion guard before {RAW_TP_GUARD.cite()}"


KPROBE, TRACEPOINT, RAW_TP = Kprobe(), Tracepoint(), RawTracepoint()
TRIGGERS: dict[str, Trigger] = {t.name: t for t in (KPROBE, TRACEPOINT, RAW_TP)}


def choose(requested: Trigger | None = None) -> tuple[Trigger, str]:
    """(trigger, why): ``requested`` if this kernel can run it, else (None:
    ``--trigger auto``) the first of :data:`TRIGGERS` that it can."""
    if requested is not None:
        why = requested.missing()
        if why is not None:
            raise UsageError("--trigger", f"{requested.name}: {why}; or run the bench in the "
                             "test VM with --kernel K")
        return requested, "asked for"
    skipped = []
    for trigger in TRIGGERS.values():
        why = trigger.missing()
        if why is None:
            return trigger, "; ".join(skipped) or f"{trigger.name} available ({trigger.because})"
        skipped.append(why)
    raise EnvironmentProblem("--trigger", "no trigger available: " + "; ".join(skipped))


def syscall_nr(name: str) -> int:
    """This architecture's number of syscall ``name`` (BCC's table)."""
    from bcc.syscall import syscalls  # {nr: name}

    for nr, sname in syscalls.items():
        if sname == name.encode():
            return nr
    raise EnvironmentProblem("--trigger raw_tp", f"syscall number of {name} unknown")
