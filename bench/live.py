"""Spawn + wait one at a time on a core holding many live domains, against
an empty core of the same runtime, in interleaved blocks:
`python -m bench.live [LIVE ...]` (default 1000 4000).

Two cores, one runtime: first both empty (the two CPUs differ a little:
that ratio is the baseline), then core 0 holding LIVE sleeping domains;
the figure is core 0's rate over core 1's, divided by the baseline."""

from __future__ import annotations

import statistics
import sys
import time

import procmgr
from bench.spawn import PROGRAM, QUIET, interleaved


def one_at_a_time(pm, core: int, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        pm.wait(pm.spawn(PROGRAM, core=core, timeout=30, **QUIET), timeout=30)
    return n / (time.perf_counter() - start)


def ratio(pm, blocks: int = 60, block: int = 30) -> tuple[float, float, float]:
    rates = interleaved({"c0": lambda: one_at_a_time(pm, 0, block),
                         "c1": lambda: one_at_a_time(pm, 1, block)}, blocks)
    return (statistics.median(a / b for a, b in zip(rates["c0"], rates["c1"])),
            statistics.median(rates["c0"]), statistics.median(rates["c1"]))


def measure(live: int, blocks: int = 60, block: int = 30) -> dict:
    with procmgr.Runtime(cores=2) as rt:
        pm = rt.client()
        one_at_a_time(pm, 0, 20)
        one_at_a_time(pm, 1, 20)
        base = ratio(pm, blocks, block)
        futures = [pm.spawn_async(["/bin/sleep", "3600"], core=0, **QUIET) for _ in range(live)]
        domains = [pm.wait_for(f, timeout=120) for f in futures]
        loaded = ratio(pm, blocks, block)
        for f in [pm.kill_async(d) for d in domains]:
            pm.wait_for(f, timeout=120)
    return {"live": live, "baseline": base[0], "loaded": loaded[0],
            "ratio": loaded[0] / base[0], "loaded_per_s": loaded[1], "empty_per_s": loaded[2]}


def table(rows: list[dict]) -> str:
    lines = ["| live domains on the core | spawn + wait rate, against an empty core | "
             "loaded /s | empty /s |", "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['live']:,} | {r['ratio']:.3f}x | {r['loaded_per_s']:,.0f} | "
                     f"{r['empty_per_s']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([measure(int(n)) for n in (sys.argv[1:] or ["1000", "4000"])]))
