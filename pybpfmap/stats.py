"""Repeated runs reduced to a median, a spread and a coefficient of variation
(the bench and bcc-compare both report their runs this way)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

CV_WARN = 0.05  # warn when runs disagree by more than this (stdev / mean)


@dataclass(frozen=True)
class Summary:
    """``runs`` figures: their median, min, max and coefficient of variation."""

    values: tuple[float, ...]

    @property
    def runs(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def cv(self) -> float:
        """Sample standard deviation over |mean|; 0 for a single run or a zero
        mean (|mean|: differences such as overheads can be negative)."""
        if len(self.values) < 2:
            return 0.0
        mean = statistics.fmean(self.values)
        return statistics.stdev(self.values) / abs(mean) if mean else 0.0

    @property
    def noisy(self) -> bool:
        return self.cv > CV_WARN


def summarise(values: list[float]) -> Summary:
    return Summary(tuple(values))


def spread(values: list[float]) -> dict:
    """median, min, max, coefficient of variation (None when it is undefined:
    one value, or a zero mean) and n, as a JSON-ready dict."""
    s = summarise(values)
    defined = s.runs > 1 and statistics.fmean(values) != 0
    return {"median": s.median, "min": s.low, "max": s.high,
            "cv": s.cv if defined else None, "n": s.runs}
