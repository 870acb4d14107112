"""Control-plane requests/s (simulated dispatchers) and spawn throughput
as simulated cores grow: `python -m bench.scale`. More cores than CPUs is
oversubscription, and the table says so."""

from __future__ import annotations

import os
import statistics
import sys
import time

import procmgr
from bench.spawn import runtime_rate

CORES = (1, 2, 4, 8, 16)


def control_plane_rate(pm, cores: int, domains: int = 600, in_flight: int = 256) -> float:
    """spawn + kill + wait requests/s, pipelined, against simulated dispatchers."""
    done = 0
    start = time.perf_counter()
    while done < 3 * domains:
        batch = min(in_flight, domains - done // 3)
        doms = [pm.wait_for(f, timeout=60) for f in
                [pm.spawn_async(["sim"], core=i % cores) for i in range(batch)]]
        for f in [pm.kill_async(d) for d in doms] + [pm.wait_async(d) for d in doms]:
            pm.wait_for(f, timeout=60)
        done += 3 * batch
    return done / (time.perf_counter() - start)


def measure(cores_list=CORES, domains: int = 3000, spawns: int = 200,
            runs: int = 3) -> list[dict]:
    rows = []
    for cores in cores_list:
        with procmgr.Runtime(cores=cores, simulate=True) as rt:
            pm = rt.client()
            control_plane_rate(pm, cores, 50)               # warm up
            cp = statistics.median(control_plane_rate(pm, cores, domains)
                                   for _ in range(runs))
        with procmgr.Runtime(cores=cores) as rt:
            pm = rt.client()
            runtime_rate(pm, 20, 8, cores)
            sp = runtime_rate(pm, spawns, 8, cores)
        rows.append({"cores": cores, "cpus": os.cpu_count(),
                     "oversubscribed": cores > (os.cpu_count() or 1),
                     "control_plane_per_s": cp, "spawn_per_s": sp})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| cores | control plane, requests/s (simulated dispatchers) | "
             "spawn + wait /bin/true per s (8 in flight) | |", "|---:|---:|---:|---|"]
    for r in rows:
        note = f"oversubscribed ({r['cpus']} CPUs)" if r["oversubscribed"] else ""
        lines.append(f"| {r['cores']} | {r['control_plane_per_s']:,.0f} | "
                     f"{r['spawn_per_s']:,.0f} | {note} |")
    lines.append("\nOne client process, 256 requests in flight; control plane: median of 3 "
                 "runs of spawn + kill + wait of 3,000 domains. "
                 "Reproduce: `.venv/bin/python -m bench.scale`.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure()))
    sys.exit(0)
