"""`python -m bench.pending_report`: reply queue against hashtable as a
Markdown table, both measured interleaved in one run."""

from __future__ import annotations

import statistics
import sys

from bench.test_pending_bench import STRATEGIES, control_plane_rate, match_cost_ns

ROUNDS = 5


def main() -> int:
    costs = {k: [] for k in STRATEGIES}
    rates = {k: [] for k in STRATEGIES}
    for _ in range(ROUNDS):
        for kind in STRATEGIES:
            costs[kind].append(match_cost_ns(kind, rounds=10_000))
            rates[kind].append(control_plane_rate(kind, requests=3000))
    cost = {k: statistics.median(v) for k, v in costs.items()}
    rate = {k: statistics.median(v) for k, v in rates.items()}
    print("| pending clients | claim + match + release, ns/request | "
          "control plane, requests/s (simulated dispatchers) |")
    print("|---|---:|---:|")
    for kind in STRATEGIES:
        print(f"| {kind} | {cost[kind]:,.0f} | {rate[kind]:,.0f} |")
    print(f"| hashtable / replyq | {cost['hashtable'] / cost['replyq']:.2f}x the cost | "
          f"replyq does {rate['replyq'] / rate['hashtable']:.2f}x the requests/s |")
    print(f"\nMedians of {ROUNDS} interleaved rounds. Control plane: spawn + kill + wait, "
          "256 in flight, manager, codec, rings and simulated spawnds all in one "
          "process (no process is started). Reproduce: "
          "`.venv/bin/python -m bench.pending_report`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
