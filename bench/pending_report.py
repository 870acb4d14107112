"""`python -m bench.pending_report`: reply queue against hashtable as a
Markdown table, both measured interleaved in one run."""

from __future__ import annotations

import statistics
import sys

from bench.test_pending_bench import STRATEGIES, control_plane_rate, match_cost_ns

ROUNDS = 5


def compare(rounds: int = ROUNDS, scale: float = 1.0) -> dict:
    """Both strategies, interleaved: medians of ns/request and requests/s."""
    costs = {k: [] for k in STRATEGIES}
    rates = {k: [] for k in STRATEGIES}
    for _ in range(rounds):
        for kind in STRATEGIES:
            costs[kind].append(match_cost_ns(kind, rounds=max(100, int(10_000 * scale))))
            rates[kind].append(control_plane_rate(kind, requests=max(30, int(3000 * scale))))
    return {"ns_per_request": {k: statistics.median(v) for k, v in costs.items()},
            "requests_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "rounds": rounds}


def table(r: dict) -> str:
    cost, rate = r["ns_per_request"], r["requests_per_s"]
    lines = ["| pending clients | claim + match + release, ns/request | "
             "control plane, requests/s (simulated dispatchers) |",
             "|---|---:|---:|"]
    for kind in STRATEGIES:
        lines.append(f"| {kind} | {cost[kind]:,.0f} | {rate[kind]:,.0f} |")
    lines.append(f"| hashtable / replyq | {cost['hashtable'] / cost['replyq']:.2f}x the cost | "
                 f"replyq does {rate['replyq'] / rate['hashtable']:.2f}x the requests/s |")
    lines.append(f"\nMedians of {r['rounds']} interleaved rounds. Control plane: spawn + kill + "
                 "wait, 256 in flight, manager, codec, rings and simulated spawnds all in one "
                 "process (no process is started). Reproduce: "
                 "`.venv/bin/python -m bench.pending_report`.")
    return "\n".join(lines)


def main() -> int:
    print(table(compare()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
