"""`python -m bench.pending_report`: reply queue against hashtable as a
Markdown table, both measured interleaved in one run."""

from __future__ import annotations

import statistics
import sys

from bench.test_pending_bench import STRATEGIES, control_plane_rate, match_cost_ns

ROUNDS = 5
IN_FLIGHT = (16, 256, 1024, 4096)
SWEEP_RUNS = 3


def compare(rounds: int = ROUNDS, scale: float = 1.0) -> dict:
    """Both strategies, interleaved: medians of ns/request and requests/s."""
    costs = {k: [] for k in STRATEGIES}
    rates = {k: [] for k in STRATEGIES}
    for _ in range(rounds):
        for kind in STRATEGIES:
            costs[kind].append(match_cost_ns(kind, rounds=max(100, int(10_000 * scale))))
            rates[kind].append(control_plane_rate(kind, requests=max(30, int(3000 * scale))))
    # As requests in flight grow past the reply queue's 1024 slots, the send
    # queue takes the overflow (backpressure) -- and the hashtable's chains grow.
    # Three interleaved runs per level, the median kept: one run alone
    # swings by 2x on this machine.
    sweep, sweep_runs = {}, SWEEP_RUNS if scale >= 0.1 else 1
    for level in IN_FLIGHT if scale >= 0.1 else IN_FLIGHT[:2]:
        requests = max(3 * level, int(3000 * scale))
        runs = {k: [] for k in STRATEGIES}
        for _ in range(sweep_runs):
            for kind in STRATEGIES:
                runs[kind].append(control_plane_rate(kind, requests=requests, in_flight=level))
        sweep[level] = {k: statistics.median(v) for k, v in runs.items()}
    return {"ns_per_request": {k: statistics.median(v) for k, v in costs.items()},
            "requests_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "in_flight": sweep, "rounds": rounds, "sweep_runs": sweep_runs}


def table(r: dict) -> str:
    cost, rate = r["ns_per_request"], r["requests_per_s"]
    lines = ["| pending clients | claim + match + release, ns/request | "
             "control plane, requests/s (simulated dispatchers) |",
             "|---|---:|---:|"]
    for kind in STRATEGIES:
        lines.append(f"| {kind} | {cost[kind]:,.0f} | {rate[kind]:,.0f} |")
    lines.append(f"| hashtable / replyq | {cost['hashtable'] / cost['replyq']:.2f}x the cost | "
                 f"replyq does {rate['replyq'] / rate['hashtable']:.2f}x the requests/s |")
    lines += ["", "| requests in flight | replyq, requests/s | hashtable, requests/s |",
              "|---:|---:|---:|"]
    for level, by_kind in r["in_flight"].items():
        lines.append(f"| {level} | {by_kind['replyq']:,.0f} | {by_kind['hashtable']:,.0f} |")
    lines.append(f"\nMedians of {r['rounds']} interleaved rounds (the in-flight sweep: of "
                 f"{r['sweep_runs']}; the reply queue has 1024 slots per spawnd, the rest waits in "
                 "the send queue). Control plane: spawn + kill + wait with 256 requests in "
                 "flight (a sliding window, bench/pipeline.py); manager, codec, rings and "
                 "simulated spawnds that release at once, as the real worker does, all in "
                 "one process (no process is started). Reproduce: "
                 "`.venv/bin/python -m bench.pending_report`.")
    return "\n".join(lines)


def main() -> int:
    print(table(compare()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
