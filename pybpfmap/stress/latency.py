"""How long a map update took: a distribution, from a BPF program's log2
histogram or from user space's exact samples, and how it is shown.

A program times its update with ``bpf_ktime_get_ns()`` around the call (NMI-safe)
and counts the nanoseconds in log2 buckets (slot ``n``: ``2**n <= ns < 2**(n+1)``,
slot 0 also holds 0 and 1 ns) plus the largest value seen; user space keeps every
sample.  From buckets a percentile is known only to its bucket, so it is
recorded as the bucket's upper bound ("at most"), and ``exact`` says which.
An -EBUSY returns at once, an -EDEADLK after the lock's detection, an
-ETIMEDOUT after the resilient lock's timeout: the histogram tells them apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pybpfmap.output import human_ns

NSLOTS = 40   # log2 slots a program keeps: 2**39 ns is 9 minutes


@dataclass
class Latency:
    """A distribution of update latencies in nanoseconds."""

    count: int = 0
    p50_ns: int | None = None
    p99_ns: int | None = None
    max_ns: int | None = None
    exact: bool = False            # False: percentiles are log2 bucket upper bounds
    log2_ns: dict[str, int] = field(default_factory=dict)   # bucket lower bound -> count

    @classmethod
    def from_log2(cls, slots: Sequence[int], max_ns: int | None) -> Latency:
        """From a program's log2 counts (index = slot) and its largest value."""
        total = sum(slots)
        if not total:
            return cls()

        def upper(q: float) -> int:
            need, seen = math.ceil(q * total), 0
            for n, c in enumerate(slots):
                seen += c
                if seen >= need:
                    bound = 2 ** (n + 1) - 1
                    return bound if max_ns is None else min(bound, max_ns)
            return max_ns or 0

        return cls(total, upper(0.50), upper(0.99), max_ns, False,
                   {str(2 ** n if n else 0): c for n, c in enumerate(slots) if c})

    @classmethod
    def from_samples(cls, samples: Iterable[int]) -> Latency:
        """From every sample (user space's own clock reads)."""
        ns = sorted(samples)
        if not ns:
            return cls()

        def at(q: float) -> int:
            return ns[min(len(ns) - 1, math.ceil(q * len(ns)) - 1)]

        slots = [0] * NSLOTS
        for v in ns:
            slots[min(NSLOTS - 1, max(v, 1).bit_length() - 1)] += 1
        return cls(len(ns), at(0.50), at(0.99), ns[-1], True,
                   {str(2 ** n if n else 0): c for n, c in enumerate(slots) if c})

    def brief(self) -> str:
        """``p50 <=1.0 us, p99 <=16 us, max 250 ms (n=1835)``."""
        if not self.count:
            return "none"
        le = "" if self.exact else "<="
        return (f"p50 {le}{human_ns(self.p50_ns)}, p99 {le}{human_ns(self.p99_ns)}, "
                f"max {human_ns(self.max_ns)} (n={self.count})")

