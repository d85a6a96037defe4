"""What a tool prints: each pipe read by a thread into a head, a tail and a count.

A tool may print for hours (funclatency's histogram, opensnoop's lines), so
only the first and last :data:`KEEP_LINES` lines are kept, enough for its
header, its error and the evidence of its normal output
(:func:`pybpfmap.bcc_compare.tools.output_evidence`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from pybpfmap.bcc_compare.tools import Tool, output_evidence

KEEP_LINES = 40


@dataclass
class Stream:
    """What a reader thread saw on one pipe: a head, a tail and a line count.
    ``first_line`` is set by a line, not by EOF; ``notify`` is called after
    every line and at EOF; ``evidence`` is the first line matching
    ``pattern``'s normal output (stdout)."""

    pattern: Tool | None
    notify: Callable[[], None] = lambda: None
    head: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    lines: int = 0
    evidence: str | None = None
    first_line: threading.Event = field(default_factory=threading.Event)

    def feed(self, pipe: IO[bytes]) -> None:
        """Read ``pipe`` to EOF (the reader thread's body)."""
        for raw in pipe:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines += 1
            if len(self.head) < KEEP_LINES:
                self.head.append(line)
            else:
                self.tail = (self.tail + [line])[-KEEP_LINES:]
            if self.pattern is not None and self.evidence is None:
                self.evidence = output_evidence(self.pattern, line)
            self.first_line.set()
            self.notify()
        self.notify()

    def text(self) -> str:
        """Head, ``[... N lines ...]``, tail."""
        skipped = self.lines - len(self.head) - len(self.tail)
        gap = [f"[... {skipped} lines ...]"] if skipped > 0 else []
        return "\n".join(self.head + gap + self.tail)


_ERROR_LINE = re.compile(r"^(bpf: |libbpf: |[\w.]*(Error|Exception)\b|Failed|cannot|Cannot)")


def error_summary(stderr: str) -> str:
    """The lines of a tool's stderr that say what went wrong (not the traceback)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    picked = [line for line in lines if _ERROR_LINE.match(line)]
    return " | ".join(list(dict.fromkeys(picked or lines[-2:]))[-3:]) or "no error output"
