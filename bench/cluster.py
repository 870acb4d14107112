"""procmgr.cluster against its peers, in one run (`python -m bench.cluster`).

A Ray cluster of two nodes on this machine (cluster_utils: a raylet each,
``cpus`` CPUs each), an agent and runtime on each (procmgr/cluster/):

- Across nodes, 64 in flight: spawn + wait of /bin/true through the
  cluster's asyncio calls (placed on both nodes: one through the rings,
  the other through its agent), against a Ray task per program that runs
  it with ``subprocess`` on the node chosen in turn (node affinity; each
  task a CPU, Ray's default) -- rounds interleaved.
- Here, one at a time: spawn + wait through the cluster on this process's
  own node (the rings) against a plain ``Client`` of the same runtime:
  what the cluster's placement and checks cost a local spawn.
- A remote round trip: ``status`` of a domain on the other node, against a
  bare Ray actor call on that node.

Output to /dev/null on both sides."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

import ray
from ray.cluster_utils import Cluster as RayCluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import procmgr
import procmgr.cluster as pcluster
from bench.spawn import PROGRAM, QUIET
from bench.stats import median_interval


@ray.remote
def run_program(argv: list[str]) -> int:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


@ray.remote(num_cpus=0)
class Echo:
    def ping(self) -> int:
        return 0


def ray_tasks_rate(nodes: list[str], n: int, in_flight: int) -> float:
    start = time.perf_counter()
    pending, sent, done = [], 0, 0
    while done < n:
        while sent < n and len(pending) < in_flight:
            strategy = NodeAffinitySchedulingStrategy(nodes[sent % len(nodes)], soft=False)
            pending.append(run_program.options(scheduling_strategy=strategy).remote(PROGRAM))
            sent += 1
        ready, pending = ray.wait(pending, num_returns=1)
        assert ray.get(ready) == [0]
        done += 1
    return n / (time.perf_counter() - start)


async def cluster_rate(acluster, n: int, in_flight: int) -> float:
    gate = asyncio.Semaphore(in_flight)

    async def one() -> int:
        async with gate:
            return await acluster.wait(await acluster.spawn(PROGRAM, **QUIET), timeout=60)

    start = time.perf_counter()
    statuses = await asyncio.gather(*(one() for _ in range(n)))
    assert statuses == [0] * n, "a /bin/true did not end with 0"
    return n / (time.perf_counter() - start)


def one_at_a_time(spawn_wait, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        spawn_wait()
    return n / (time.perf_counter() - start)


def round_trips(call, n: int) -> float:
    """Median seconds of ``call()``."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compare(n: int = 640, in_flight: int = 64, rounds: int = 5, block: int = 50,
            blocks: int = 30, trips: int = 300, cpus: int = 1) -> dict:
    rc = RayCluster(initialize_head=True, head_node_args={"num_cpus": cpus})
    rc.add_node(num_cpus=cpus)
    rc.wait_for_nodes()
    try:
        cluster = pcluster.connect(rc.address)
        try:
            return _compare(cluster, n, in_flight, rounds, block, blocks, trips, cpus)
        finally:
            cluster.down()
            cluster.close()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        rc.shutdown()


def _compare(cluster, n, in_flight, rounds, block, blocks, trips, cpus) -> dict:
    nodes = [info.node for info in cluster.nodes() if info.alive]
    other = next(node for node in nodes if node != cluster.here)
    acluster = cluster.aio()
    many = {"cluster": [], "ray": []}
    for i in range(rounds + 1):                   # the first round warms both up
        for name in (("cluster", "ray") if i % 2 == 0 else ("ray", "cluster")):
            rate = asyncio.run(cluster_rate(acluster, n, in_flight)) if name == "cluster" \
                else ray_tasks_rate(nodes, n, in_flight)
            if i > 0:
                many[name].append(rate)
            acluster.close()                      # its client was bound to that loop

    # Here, one at a time: the cluster on this node's runtime, and a plain client of it.
    pm = procmgr.connect(cluster._agents[cluster.here][1]["runtime"])
    sides = {
        "cluster": lambda: cluster.wait(cluster.spawn(PROGRAM, node=cluster.here, core=0,
                                                      **QUIET), timeout=30),
        "plain": lambda: pm.wait(pm.spawn(PROGRAM, core=0, **QUIET), timeout=30),
    }
    local = {"cluster": [], "plain": []}
    for i in range(blocks + 1):
        for name in (("cluster", "plain") if i % 2 == 0 else ("plain", "cluster")):
            rate = one_at_a_time(sides[name], block)
            if i > 0:
                local[name].append(rate)
    pm.close()

    d = cluster.spawn(["sleep", "60"], node=other, **QUIET)
    echo = Echo.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False)
                        ).remote()
    ray.get(echo.ping.remote())
    trip = {"cluster": [], "ray": []}
    for i in range(6):
        for name in (("cluster", "ray") if i % 2 == 0 else ("ray", "cluster")):
            call = (lambda: cluster.status(d)) if name == "cluster" \
                else (lambda: ray.get(echo.ping.remote()))
            trip[name].append(round_trips(call, trips // 6))
    cluster.kill(d, timeout=30)
    ray.kill(echo)

    paired_many = [c / r for c, r in zip(many["cluster"], many["ray"])]
    paired_local = [c / p for c, p in zip(local["cluster"], local["plain"])]
    return {"many": {k: statistics.median(v) for k, v in many.items()},
            "ratio_many": statistics.median(paired_many),
            "interval_many": median_interval(paired_many),
            "local": {k: statistics.median(v) for k, v in local.items()},
            "ratio_local": statistics.median(paired_local),
            "interval_local": median_interval(paired_local),
            "trip": {k: statistics.median(v) for k, v in trip.items()},
            "n": n, "in_flight": in_flight, "rounds": rounds, "block": block,
            "blocks": blocks, "cpus_per_node": cpus, "cpus": os.cpu_count()}


def table(r: dict) -> str:
    lo, hi, _ = r["interval_many"]
    llo, lhi, _ = r["interval_local"]
    t = r["trip"]
    return "\n".join([
        "| | procmgr.cluster | peer | ratio |",
        "|---|---:|---:|---:|",
        f"| spawn + wait of /bin/true across 2 nodes, {r['in_flight']} in flight, per s; "
        f"peer: a Ray task per program running it with `subprocess` | "
        f"{r['many']['cluster']:,.0f} | {r['many']['ray']:,.0f} | "
        f"{r['ratio_many']:.2f}x ({lo:.2f}–{hi:.2f}x) |",
        f"| spawn + wait on this node, one at a time, per s; peer: a plain `Client` of "
        f"the same runtime | {r['local']['cluster']:,.0f} | {r['local']['plain']:,.0f} | "
        f"{r['ratio_local']:.3f}x ({llo:.3f}–{lhi:.3f}x) |",
        f"| a round trip to the other node (`status`), median µs; peer: a bare Ray actor "
        f"call there | {t['cluster'] * 1e6:,.0f} | {t['ray'] * 1e6:,.0f} | "
        f"{t['cluster'] / t['ray']:.2f}x the cost |",
        f"\nTwo nodes of {r['cpus_per_node']} CPU(s) each (Ray's cluster_utils) on "
        f"{r['cpus']} CPUs. Across: {r['rounds']} interleaved rounds of {r['n']}, the median "
        f"of their ratios. Here: {r['blocks']} interleaved blocks of {r['block']}. "
        f"Reproduce: `.venv/bin/python -m bench.cluster`.",
    ])


def main() -> int:
    print(table(compare()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
