"""What every workload is: set up once (``with``), then one bounded window at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

CHECK_EVERY = 200  # operations between clock reads (for the sub-microsecond ones)


@dataclass
class Window:
    """What one window did: operations, seconds, and counts per kind of work."""

    ops: int
    elapsed: float
    counts: dict[str, int] = field(default_factory=dict)


def timed(op: Callable[[], None], duration: float,
          check_every: int = CHECK_EVERY) -> Window:
    """Call ``op`` for about ``duration`` s, reading the clock every
    ``check_every`` calls; how many calls, in how long."""
    ops = 0
    start = time.perf_counter()
    deadline = start + duration
    while True:
        for _ in range(check_every):
            op()
        ops += check_every
        now = time.perf_counter()
        if now >= deadline:
            return Window(ops, now - start)


class Workload:
    """Set up once (``with``), then :meth:`window` as often as needed."""

    name: ClassVar[str] = ""
    check_every: ClassVar[int] = CHECK_EVERY

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def op(self) -> None:
        raise NotImplementedError

    def window(self, duration: float) -> Window:
        return timed(self.op, duration, self.check_every)
