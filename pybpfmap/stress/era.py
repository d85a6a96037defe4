"""Which map-operation errors and splats a kernel era explains, with the commits.

This is the one place where pybpfmap compares kernel versions.  It cannot be
avoided here: whether a re-entrant map op returns -EBUSY or -EDEADLK, and
whether a tracing program with a non-preallocated hash map triggers a WARN,
is not something user space can ask the kernel without provoking it.
Everything that *can* be probed (tracepoints, kprobes, bpf_prog_info's
recursion_misses, BPF_ENABLE_STATS) is probed where it is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pybpfmap.maps import MapSpec


@dataclass(frozen=True)
class Change:
    """A kernel commit that changed what a stress run sees."""

    commit: str
    subject: str
    version: tuple[int, int]

    def cite(self) -> str:
        """drgn style: Linux kernel commit X ("subject") (in vA.B)."""
        return (f'Linux kernel commit {self.commit} ("{self.subject}") '
                f"(in v{self.version[0]}.{self.version[1]})")


PREALLOC = Change("6c9059817432", "bpf: pre-allocate hash map elements", (4, 6))
TIGHTEN = Change("94dacdbd5d2d", "bpf: Tighten the requirements for preallocated hash maps",
                 (5, 7))
MAP_LOCKED = Change("20b6cc34ea74", "bpf: Avoid hashtab deadlock with map_locked", (5, 10))
MEM_ALLOC = Change("fba1a1c6c912", "bpf: Convert hash map to bpf_mem_alloc.", (6, 1))
RELAX = Change("34dd3bad1a6f", "bpf: Relax the requirement to use preallocated hash maps "
               "in tracing progs.", (6, 1))
MISSED_STATS = Change("dd8657894c11", "bpf: Count missed stats in trace_call_bpf", (6, 7))
RQSPINLOCK = Change("4fa8d68aa53e", "bpf: Convert hashtab.c to rqspinlock", (6, 15))

# The WARN that TIGHTEN added and RELAX removed (kernel/bpf/verifier.c).
RUNTIME_ALLOC_WARN = r"trace type BPF program uses run-time allocation"


def parse_release(release: str) -> tuple[int, int]:
    """(major, minor) of a ``uname -r`` string such as "6.1.0-56-amd64"."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return int(m.group(1)), int(m.group(2))


def _in(v: tuple[int, int], since: Change, until: Change | None = None) -> bool:
    return v >= since.version and (until is None or v < until.version)


def explain_error(release: str, spec: MapSpec, op: str, err: str,
                  failed_updates: int = 0, count: int = 0) -> str | None:
    """Why ``op`` on ``spec`` may fail with errno name ``err`` inside a
    tracing program on this kernel; None when the era does not explain it.

    ``failed_updates``/``count``: an ENOENT on lookup/delete is explained
    when no more of them happened than updates failed (the element was never
    inserted)."""
    v = parse_release(release)
    if err in ("EBUSY",) and op in ("update", "delete") and _in(v, MAP_LOCKED, RQSPINLOCK):
        return (f"re-entrant op on a bucket lock this CPU holds is refused: "
                f"{MAP_LOCKED.cite()}")
    if err in ("EDEADLK", "ETIMEDOUT") and op in ("update", "delete") and _in(v, RQSPINLOCK):
        return f"the resilient bucket lock detected a deadlock or timed out: {RQSPINLOCK.cite()}"
    if err == "ENOMEM" and op == "update" and not spec.prealloc:
        return ("a non-preallocated map allocates each new element; in a tracing context "
                "the allocation may fail (bpf_mem_alloc refills its caches "
                f"asynchronously: {MEM_ALLOC.cite()})")
    if err == "ENOENT" and op in ("lookup", "delete") and count <= failed_updates:
        return "the update before it failed, so the element was never inserted"
    return None


def allowed_splats(release: str, specs: list[MapSpec]) -> list[str]:
    """Regexes of splats this era explains for these maps: the one-time WARN
    for a non-preallocated hash map in a tracing program on 5.7–6.0."""
    v = parse_release(release)
    if _in(v, TIGHTEN, RELAX) and any(not s.prealloc for s in specs):
        return [RUNTIME_ALLOC_WARN]
    return []


def expectations(release: str) -> list[str]:
    """What this era predicts, for the report's header."""
    v = parse_release(release)
    out = []
    if _in(v, MAP_LOCKED, RQSPINLOCK):
        out.append(f"re-entrant map ops return EBUSY: {MAP_LOCKED.cite()}")
    elif _in(v, RQSPINLOCK):
        out.append(f"re-entrant map ops return EDEADLK/ETIMEDOUT: {RQSPINLOCK.cite()}")
    else:
        out.append("no map_locked re-entry check: a re-entrant update can deadlock "
                   f"(the problem {PREALLOC.cite()} started to address)")
    if _in(v, TIGHTEN, RELAX):
        out.append(f'NO_PREALLOC maps in tracing programs WARN "{RUNTIME_ALLOC_WARN}": '
                   f"{TIGHTEN.cite()}")
    elif _in(v, RELAX):
        out.append(f"NO_PREALLOC maps are allowed in tracing programs: {RELAX.cite()}")
    if _in(v, MISSED_STATS):
        out.append(f"skipped (nested) runs count in recursion_misses: {MISSED_STATS.cite()}")
    return out
