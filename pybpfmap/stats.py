"""Repeated runs reduced to a median, a spread and a coefficient of variation
(the bench and bcc-compare both report their runs this way), and means with
Student-t confidence intervals (bcc-compare's overhead differences)."""

from __future__ import annotations

import math
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


# --- Confidence intervals (bcc-compare: overhead differences) ----------------
#
# Student's t distribution without scipy: its CDF is a regularized incomplete
# beta function, computed with the continued fraction of Numerical Recipes
# (Press et al., 3rd ed., section 6.4, modified Lentz), and the quantile by
# bisection on the CDF.


def _beta_cf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _beta_inc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")
    tail = 0.5 * _beta_inc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom
    (``t_quantile(0.975, 4)`` = 2.7764...)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), not {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class MeanCI:
    """A mean with its two-sided confidence interval (Student's t over ``n``
    independent values); ``low``/``high`` are None when ``n`` < 2."""

    mean: float
    low: float | None
    high: float | None
    n: int
    confidence: float = 0.95

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def spans_zero(self) -> bool:
        """True when the interval contains 0 (or is undefined): no evidence
        that the true mean differs from 0 at this confidence."""
        return not self.defined or self.low <= 0.0 <= self.high  # type: ignore[operator]


def mean_ci(values: list[float], confidence: float = 0.95) -> MeanCI:
    """Mean of ``values`` with a ``confidence`` t-interval:
    mean ± t(1 - (1 - confidence)/2, n - 1) · s / √n."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if n < 2:
        return MeanCI(mean, None, None, n, confidence)
    half = (t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1)
            * statistics.stdev(values) / math.sqrt(n))
    return MeanCI(mean, mean - half, mean + half, n, confidence)
