"""The ring against its peers, in one run (`pytest bench/`).

The targets are ratios against peers measured in the same session, so they
hold on a shared, noisy machine; absolute figures go to extra_info.
"""

from __future__ import annotations

import pytest

from bench.peers import compare

TARGETS = {
    "ring / faster_fifo": 15.0,
    "ring / mp_pipe": 5.0,
}


@pytest.fixture(scope="module")
def results():
    return compare(rounds=5, scale=0.5)


def test_single_message_throughput_against_peers(benchmark, results):
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(results["medians"])
    benchmark.extra_info.update(results["ratios"])
    benchmark.extra_info["machine"] = results["machine"]
    for ratio, floor in TARGETS.items():
        assert results["ratios"][ratio] >= floor, (ratio, results["ratios"][ratio])


def test_ping_pong_round_trip(results):
    assert results["medians"]["ring_rtt_median_us"] <= 5.0


def test_numpy_batch_throughput(results):
    assert results["medians"]["ring_batch"] >= 30e6


def test_blocked_consumer_is_idle(results):
    assert results["medians"]["ring_idle_cpu"] < 0.01
