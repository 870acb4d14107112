"""Control-plane requests/s (simulated dispatchers) and spawn throughput
as simulated cores grow: `python -m bench.scale`. More cores than CPUs is
oversubscription, and the table says so."""

from __future__ import annotations

import os
import statistics
import sys

import procmgr
from bench.pipeline import spawn_kill_wait_rate
from bench.spawn import runtime_rate

CORES = (1, 2, 4, 8, 16)


def control_plane_rate(pm, cores: int, domains: int = 600, in_flight: int = 256) -> float:
    """spawn + kill + wait requests/s, pipelined, against simulated dispatchers."""
    return spawn_kill_wait_rate(pm, cores, domains, in_flight)


def measure(cores_list=CORES, domains: int = 5000, spawns: int = 200,
            runs: int = 5) -> list[dict]:
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
    lines.append("\nOne client process keeping 256 requests in flight (a sliding window: "
                 "each spawn's answer sends that domain's kill and wait, bench/pipeline.py); "
                 "control plane: median of 5 runs of spawn + kill + wait of 5,000 domains "
                 "against simulated dispatchers (no process is started). "
                 "Reproduce: `.venv/bin/python -m bench.scale`.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure()))
    sys.exit(0)
