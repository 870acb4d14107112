"""Spawn-and-wait of /bin/true through the runtime against raw
os.posix_spawn + waitpid, in one run (`python -m bench.spawn`)."""

from __future__ import annotations

import collections
import os
import statistics
import sys
import time

import numpy as np

import procmgr

PROGRAM = ["/bin/true"]


def raw_rate(n: int, in_flight: int) -> float:
    env = dict(os.environ)
    pending = collections.deque()
    start = time.perf_counter()
    for _ in range(n):
        pending.append(os.posix_spawn(PROGRAM[0], PROGRAM, env))
        if len(pending) >= in_flight:
            os.waitpid(pending.popleft(), 0)
    while pending:
        os.waitpid(pending.popleft(), 0)
    return n / (time.perf_counter() - start)


def runtime_rate(pm, n: int, in_flight: int, cores: int) -> float:
    spawns, waits = collections.deque(), []
    start = time.perf_counter()
    for i in range(n):
        spawns.append(pm.spawn_async(PROGRAM, core=i % cores))
        if len(spawns) >= in_flight:
            waits.append(pm.wait_async(pm.wait_for(spawns.popleft(), timeout=30)))
            if len(waits) >= in_flight:
                pm.wait_for(waits.pop(0), timeout=30)
    waits += [pm.wait_async(pm.wait_for(f, timeout=30)) for f in spawns]
    for f in waits:
        pm.wait_for(f, timeout=30)
    return n / (time.perf_counter() - start)


def spawn_latency_us(pm, n: int, cores: int) -> tuple[float, float]:
    samples = []
    for i in range(n):
        t = time.perf_counter_ns()
        d = pm.spawn(PROGRAM, core=i % cores, timeout=30)
        samples.append(time.perf_counter_ns() - t)
        pm.wait(d, timeout=30)
    return float(np.median(samples)) / 1e3, float(np.percentile(samples, 99)) / 1e3


def compare(n: int = 400, rounds: int = 3, cores: int = 2) -> dict:
    res = {k: [] for k in ("raw1", "rt1", "raw8", "rt8")}
    with procmgr.Runtime(cores=cores) as rt:
        pm = rt.client()
        for _ in range(rounds):
            res["raw1"].append(raw_rate(n, 1))
            res["rt1"].append(runtime_rate(pm, n, 1, cores))
            res["raw8"].append(raw_rate(n, 8))
            res["rt8"].append(runtime_rate(pm, n, 8, cores))
        lat = spawn_latency_us(pm, n // 2, cores)
    med = {k: statistics.median(v) for k, v in res.items()}
    return {"medians": med, "latency_us": lat,
            "ratio1": med["rt1"] / med["raw1"], "ratio8": med["rt8"] / med["raw8"],
            "rounds": rounds, "cores": cores, "cpus": os.cpu_count()}


def table(r: dict) -> str:
    m = r["medians"]
    return "\n".join([
        "| spawn + wait of /bin/true | raw posix_spawn + waitpid, /s | runtime, /s | runtime / raw |",
        "|---|---:|---:|---:|",
        f"| one at a time | {m['raw1']:,.0f} | {m['rt1']:,.0f} | {r['ratio1']:.2f}x |",
        f"| 8 in flight | {m['raw8']:,.0f} | {m['rt8']:,.0f} | {r['ratio8']:.2f}x |",
        f"\nClient-measured spawn latency: median {r['latency_us'][0]:,.0f} µs, "
        f"p99 {r['latency_us'][1]:,.0f} µs. Medians of {r['rounds']} interleaved rounds, "
        f"{r['cores']} cores on {r['cpus']} CPUs. Reproduce: `.venv/bin/python -m bench.spawn`.",
    ])


def main() -> int:
    print(table(compare()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
