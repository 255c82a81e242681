"""Medians, quartiles, percentiles and ratios of benchmark figures (``None`` where missing)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ("median", "percentile", "quartiles", "ratio")


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values present (not ``None`` nor NaN), ``None`` if there are none."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def quartiles(values: Sequence[float | None]) -> tuple[float, float] | None:
    """The first and third quartiles (``None`` for fewer than 2 values)."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    q1, _, q3 = statistics.quantiles(present, n=4, method="inclusive")
    return q1, q3


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(p / 100.0 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    """*a* / *b*, ``None`` if either is missing or *b* is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b
