"""What one tool's measurement is made of: windows in rounds, and each mode's process.

For each of ``runs`` rounds there is one window without any tool
(baseline), one with the tool as shipped and one with its hash maps
rewritten to ``BPF_F_NO_PREALLOC``, in the order B S N, then B N S, B S N...
(:func:`round_order`: ABAB, so that a drift over time does not favour either
mode).  Each round gives a paired difference of the two modes' cost per event
(:mod:`.result`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pybpfmap.bcc_compare.launcher import MODES
from pybpfmap.bcc_compare.tools import Tool


@dataclass
class Window:
    """One workload window: which round, what was attached, what it did."""

    round: int
    slot: str           # baseline, shipped or noprealloc
    ops: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.ops / self.elapsed


@dataclass
class ModeRun:
    """One tool process (one mode) over the whole measurement."""

    mode: str
    maps: dict = field(default_factory=dict)       # verify.tool_maps
    attachments: int = 0                           # probes the tool opened
    start_s: float = 0.0                           # until its first line
    status: int | None = None
    evidence: str | None = None
    output_lines: int = 0


@dataclass
class Measurement:
    """Everything measured for one tool."""

    tool: Tool
    duration: float
    runs: int
    start_deadline_s: float
    windows: list[Window] = field(default_factory=list)
    modes: dict[str, ModeRun] = field(default_factory=dict)
    isolation: str = ""
    # BPF programs loaded by others (not these tool processes) at baselines:
    # nonzero means the "without the tool" numbers may carry someone's probes.
    other_programs: int = 0
    elapsed_s: float = 0.0


def round_order(r: int) -> tuple[str, ...]:
    """The slots of round ``r``: B S N, B N S, B S N, ..."""
    return ("baseline", *(MODES if r % 2 == 0 else MODES[::-1]))
