"""Human tables and JSON: the two ways every command prints its results."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from pybpfmap.records import to_json


def print_json(data: Any, out: TextIO | None = None) -> None:
    """``data`` (records, dataclasses, plain values) as one JSON document."""
    out = out or sys.stdout
    json.dump(to_json(data), out, indent=2, sort_keys=False)
    out.write("\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          out: TextIO | None = None) -> None:
    """Print :func:`text_table` to ``out`` (default stdout)."""
    (out or sys.stdout).write(text_table(headers, rows))


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table (numbers right-aligned)."""
    lines = []
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in rows if r[i] is not None) and rows
               for i in range(len(headers))]
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; None shows as an en dash, floats with 3 significant digits."""
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def human_bytes(n: int | None) -> str | None:
    if n is None:
        return None
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return None


def human_ns(ns: int | None) -> str:
    """Nanoseconds in the largest unit that keeps them >= 1 (3 digits): 8.19 us, 250 ms."""
    if ns is None:
        return "-"
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns} ns"


class Progress:
    """``step(label)`` after each measurement; ``done()`` clears the line."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None):
        self.total = max(total, 1)
        self.count = 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()

    def step(self, label: str) -> None:
        self.count += 1
        if not self.enabled:
            return
        width = 30
        filled = width * self.count // self.total
        spent = time.monotonic() - self.t0
        left = spent / self.count * (self.total - self.count)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                          f"{self.count}/{self.total} ~{left:4.0f}s left  {label[:40]:<40}")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
