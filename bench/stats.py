"""Statistics the benchmarks share."""

from __future__ import annotations

import math

import numpy as np


def median_p99_us(samples_ns) -> tuple[float, float]:
    """Median and 99th percentile of latency samples in ns, in µs."""
    samples = np.asarray(samples_ns)
    return float(np.median(samples)) / 1e3, float(np.percentile(samples, 99)) / 1e3


def median_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """An interval for the median of the distribution ``values`` come from,
    whatever that distribution: the k-th smallest and the k-th largest value,
    for the largest k whose coverage is at least ``level``. Each value falls
    below the median with probability 1/2, so the chance that at least k fall
    on each side is binomial. With too few values for ``level`` it is the
    smallest and the largest. Returns (low, high, coverage).

    Why not the spread of the values alone: on a machine whose speed drifts
    between rounds, this says how far the median itself may be off."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    below = 0.0                        # P(Binomial(n, 1/2) <= k - 1)
    best = (xs[0], xs[-1], 1 - 2 * 0.5 ** n)
    for k in range(1, (n + 1) // 2 + 1):
        below += math.comb(n, k - 1) / 2 ** n
        coverage = 1 - 2 * below
        if coverage < level:
            break
        best = (xs[k - 1], xs[n - k], coverage)
    return best
