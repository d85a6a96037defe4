"""Watching the machine while probes are attached: is it still responsive
(a heartbeat), and did the kernel complain (new ``/dev/kmsg`` records)?

Both are context managers started before the probes are attached and read
after they are detached, so the window covers the whole risky part.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

KMSG = "/dev/kmsg"


@dataclass
class Heartbeat:
    """A thread that wakes every ``period`` seconds; ``max_delay_s`` is the
    worst lateness seen: how long the machine failed to run it."""

    period: float = 0.05
    beats: int = 0
    max_delay_s: float = 0.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pybpfmap-heartbeat",
                                        daemon=True)

    def _run(self) -> None:
        expected = time.monotonic() + self.period
        while not self._stop.wait(max(0.0, expected - time.monotonic())):
            now = time.monotonic()
            self.max_delay_s = max(self.max_delay_s, now - expected)
            self.beats += 1
            expected = now + self.period

    def as_dict(self) -> dict:
        return {"period_s": self.period, "beats": self.beats,
                "max_delay_s": round(self.max_delay_s, 4)}


@contextmanager
def heartbeat(period: float = 0.05) -> Iterator[Heartbeat]:
    hb = Heartbeat(period)
    hb._thread.start()
    try:
        yield hb
    finally:
        hb._stop.set()
        hb._thread.join(timeout=5)


class KmsgWatch:
    """New kernel log records since this object was made, read from
    ``/dev/kmsg`` (each reader has its own position; seek to the end first)."""

    def __init__(self) -> None:
        self.fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read_new(self) -> str:
        """The records since the last call, as dmesg-style "[ seconds] text" lines."""
        lines = []
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten before we read them
                continue
            if not rec:
                break
            head, _, body = rec.decode(errors="replace").partition(";")
            fields = head.split(",")
            ts = int(fields[2]) / 1e6 if len(fields) > 2 and fields[2].isdigit() else 0.0
            text, *cont = body.rstrip("\n").split("\n")
            lines.append(f"[{ts:12.6f}] {text}")
            # Continuation lines (" KEY=value" dictionary) are metadata, not text.
        return "\n".join(lines)


@contextmanager
def kmsg_watch() -> Iterator[KmsgWatch]:
    w = KmsgWatch()
    try:
        yield w
    finally:
        w.close()


def inject_kmsg(text: str) -> None:
    """Write a line into the kernel log (root only): the negative control for
    the splat check."""
    with open(KMSG, "w") as f:
        f.write(text + "\n")
