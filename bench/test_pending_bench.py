"""Pending-client matching: the reply queue against the hashtable it
replaced, measured side by side in one run.

- per-request cost: claim a slot for a request, match its reply, release;
  with a realistic number of requests in flight;
- end to end: control-plane requests/s through the real manager, rings and
  codec, in one process, against simulated spawnds that answer at once
  (simulated dispatchers: no process is started).
"""

from __future__ import annotations

import statistics

import pytest

from bench.pipeline import PER_DOMAIN, spawn_kill_wait_rate
from procmgr.testing.inprocess import InProcessRuntime
from procmgr.manager._core import churn
from procmgr.manager.pending import make_pending

STRATEGIES = ("replyq", "hashtable")


def match_cost_ns(kind: str, in_flight: int = 64, rounds: int = 200_000) -> float:
    """Median-of-5 ns per request: claim a slot, match the oldest reply in
    order, release it, with ``in_flight`` requests standing. Timed in C
    (``_core.churn``), where the core uses the structures: from Python the
    call itself would cost more than either structure."""
    return statistics.median(churn(make_pending(kind, 1024), in_flight, rounds)
                             for _ in range(5))


def control_plane_rate(kind: str, requests: int = 4000, in_flight: int = 256) -> float:
    """Spawn + kill + wait requests/s through the manager, pipelined."""
    with InProcessRuntime(cores=2, pending=kind, prefix="procmgr-bench", releases=True) as rt:
        return spawn_kill_wait_rate(rt.client(), 2, max(1, requests // PER_DOMAIN), in_flight)


@pytest.mark.parametrize("kind", STRATEGIES)
def test_match_cost(benchmark, kind):
    ns = benchmark.pedantic(match_cost_ns, args=(kind,), rounds=1, iterations=1)
    benchmark.extra_info["ns_per_request"] = ns
    assert ns > 0


def test_replyq_vs_hashtable_same_run(benchmark):
    """Both strategies, interleaved, in one run; the ratio is what holds."""
    def measure():
        rates = {k: [] for k in STRATEGIES}
        costs = {k: [] for k in STRATEGIES}
        for _ in range(3):
            for kind in STRATEGIES:
                costs[kind].append(match_cost_ns(kind, rounds=5000))
                rates[kind].append(control_plane_rate(kind, requests=1500))
        return ({k: statistics.median(v) for k, v in costs.items()},
                {k: statistics.median(v) for k, v in rates.items()})

    costs, rates = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update({f"{k}_ns_per_request": v for k, v in costs.items()})
    benchmark.extra_info.update({f"{k}_requests_per_s": v for k, v in rates.items()})
    # The reply queue does no hashing and no allocation per request.
    assert costs["replyq"] < costs["hashtable"]
    # End to end, matching is a small part of a request's cost (the codec
    # and the rings dominate), so only a gross regression is asserted.
    assert rates["replyq"] > 0.5 * rates["hashtable"]
