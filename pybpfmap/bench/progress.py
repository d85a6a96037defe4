"""A one-line progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


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
