"""bench.stats.median_interval: the interval the spawn table gives for its
median ratio covers the true median as often as it says."""

import numpy as np
import pytest

from bench.stats import median_interval, median_p99_us


def test_order_statistics_and_their_coverage():
    # Five values: only the smallest and largest, 1 - 2/32 of the time.
    assert median_interval([5, 1, 4, 2, 3]) == (1, 5, 1 - 2 / 32)
    # Nine: the 2nd smallest and 2nd largest, 1 - 2 * (1 + 9) / 512.
    low, high, coverage = median_interval(range(1, 10))
    assert (low, high) == (2, 8) and coverage == pytest.approx(1 - 20 / 512)
    # Asking for less confidence narrows it.
    assert median_interval(range(1, 10), level=0.8)[:2] == (3, 7)


@pytest.mark.parametrize("n", [5, 9, 15])
def test_covers_the_true_median_as_often_as_it_says(n):
    # A skewed distribution (exponential, median ln 2), as round times are.
    rng = np.random.default_rng(4)
    trials = 4000
    hits = 0
    for _ in range(trials):
        low, high, coverage = median_interval(rng.exponential(size=n))
        hits += low <= np.log(2) <= high
    assert hits / trials == pytest.approx(coverage, abs=0.02)


def test_bad_input_and_latency_summary():
    with pytest.raises(ValueError, match="no values"):
        median_interval([])
    assert median_interval([7]) == (7, 7, 0.0)
    median, p99 = median_p99_us(np.arange(1, 1001) * 1000)
    assert median == pytest.approx(500.5) and p99 == pytest.approx(990.01)
