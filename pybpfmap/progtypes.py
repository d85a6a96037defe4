"""Whether each program type may use a map: the verifier asked, not the version.

A program of each type that references the map (``r1 = map; r0 = 0; exit``)
is loaded with the verifier's log.  For a BPF_F_NO_PREALLOC hash map the
verifier's check_map_prog_compatibility() said, by era: perf_event programs
refused ("perf_event programs can only use preallocated hash map", EINVAL)
until Linux kernel commit 96da3f7d489d ("bpf: Remove tracing program
restriction on map types") (in v6.1); other tracing types (kprobe,
tracepoint, raw_tp) loaded with a WARN_ONCE and the note "trace type programs
with run-time allocated hash maps are unsafe" since Linux kernel commit
94dacdbd5d2d ("bpf: Tighten the requirements for preallocated hash maps")
(in v5.7), refused on PREEMPT_RT since Linux kernel commit 2ed905c521e5
("bpf: Enforce preallocation for instrumentation programs on RT") (in v5.7);
networking types (tc, XDP) never cared.  :func:`check` reports what this
kernel says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pybpfmap import bpfsys
from pybpfmap.errors import UsageError, errno_name
from pybpfmap.maps import MapSpec

# uapi enum bpf_prog_type
PROG_TYPES = {"kprobe": 2, "tc": 3, "xdp": 6, "tracepoint": 5, "perf_event": 7,
              "raw_tp": 17}
TRACING = ("kprobe", "tracepoint", "perf_event", "raw_tp")
# The verifier's words about a map's allocation (kernel/bpf/verifier.c)
MAP_WORDS = ("preallocated hash map", "run-time allocated hash maps")


@dataclass
class LoadResult:
    """One program type with one map: loaded or refused, and what the verifier said."""

    prog: str
    loaded: bool
    errno: str | None = None   # the refusal's errno name
    said: str = ""             # the verifier's line about the map's allocation, if any

    def brief(self) -> str:
        what = "loads" if self.loaded else f"refused ({self.errno})"
        return what + (f": {self.said}" if self.said else "")


def parse_progs(text: str) -> list[str]:
    progs = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    bad = [p for p in progs if p not in PROG_TYPES]
    if bad or not progs:
        raise UsageError("--prog", f"unknown program type {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(PROG_TYPES)}")
    return progs


def check(spec: MapSpec, progs: list[str]) -> list[LoadResult]:
    """Load a program of each type in ``progs`` that references a map of
    ``spec`` (made small: max_entries does not change the verifier's answer)."""
    small = MapSpec(spec.type, spec.prealloc, spec.key_size, spec.value_size,
                    min(spec.max_entries, 64), spec.extra_flags)
    out = []
    with small.create() as m:
        code = bpfsys.ld_map_fd(1, m.fd) + bpfsys.insn(0xB7, 0) + bpfsys.insn(0x95)
        for prog in progs:
            try:
                # level 2: level 1 rewinds a successful load's log to its statistics
                fd, log = bpfsys.prog_load(PROG_TYPES[prog], code, name="pybpfmap_prog",
                                           log_level=2)
                os.close(fd)
                out.append(LoadResult(prog, True, said=_said(log)))
            except bpfsys.ProgLoadError as e:
                out.append(LoadResult(prog, False, errno_name(e.errno), _said(e.log)))
    return out


def _said(log: str) -> str:
    return next((line.strip() for line in log.splitlines()
                 if any(w in line for w in MAP_WORDS)), "")
