"""Whether a record's runs prove themselves, in either mode.

Every window of every run is summed: the program's own count of its runs
against the runs asked for (test_run: exactly calls x repeat; syscall: at
least one per trigger call, a few more allowed for other processes' getuid()
on the trigger CPUs), runs on CPUs that were asked for nothing, failed map
calls by errno, and the kernel's ``recursion_misses`` where it counts them
for such a program.  Any of these makes the record *flagged*
(:class:`~pybpfmap.bench.record.Verification` lists why).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pybpfmap.bench.program import Counts
from pybpfmap.bench.record import Verification

STRAY_TOLERANCE = 0.01   # syscall: extra program runs (others' getuid()) before a record is flagged


class Phase(Protocol):
    """One program's window: :class:`pybpfmap.bench.inkernel.Phase` and
    :class:`pybpfmap.bench.syscall.Phase` both answer these."""

    counts: Counts

    @property
    def recursion_misses(self) -> int | None: ...

    def events(self) -> int: ...

    def triggers(self) -> int: ...

    def elsewhere(self) -> int: ...


def failures_text(failures: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{op} {name} {n}" for op, errs in failures.items()
                     for name, n in sorted(errs.items(), key=lambda x: -x[1]))


def verify(phases: Iterable[Phase], misses: tuple[bool, str], *, exact: bool) -> Verification:
    """The verification of every window in ``phases``.  ``misses`` is
    (whether this kernel counts the program's skipped runs, the note saying
    so); ``exact``: the runs must equal the runs asked for (test_run), else
    none may be missing and few extra (syscall)."""
    counts = Counts([])
    events = triggers = elsewhere = 0
    skipped: int | None = 0          # None: some window has no count
    for phase in phases:
        counts.add(phase.counts)
        events += phase.events()
        triggers += phase.triggers()
        elsewhere += phase.elsewhere()
        m = phase.recursion_misses
        skipped = None if m is None or skipped is None else skipped + m
    counted, note = misses
    problems = []
    diff = events - triggers
    if exact and diff:
        problems.append(f"the program counted {events} runs where {triggers} were asked for")
    elif not exact and diff < 0:
        problems.append(f"{-diff} of {triggers} trigger calls did not run the program")
    elif not exact and diff > STRAY_TOLERANCE * triggers:
        problems.append(f"{diff} more program runs than trigger calls on the trigger CPUs "
                        "(other processes' getuid() there)")
    if exact and elsewhere:
        problems.append(f"{elsewhere} runs on CPUs that were not asked to run anything")
    if counts.failed:
        problems.append(f"{counts.failed} map calls failed: {failures_text(counts.failures)}")
    if counted and skipped:
        problems.append(f"recursion_misses {skipped}: the program was skipped that often")
    return Verification(events, triggers, diff, elsewhere, counts.failures,
                        skipped if counted else None, note, problems)
