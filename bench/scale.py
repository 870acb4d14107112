"""How the runtime's costs grow with the work: `python -m bench.scale
[--quick]` (or `procmgr bench scale`).

Four curves, each point with the p50 and p99 of a request's latency and
the memory it takes:

- **cores** 1 -> 64 (more cores than CPUs is oversubscription, and the
  table says so): a fresh runtime per point; how long until every core
  has answered, the control plane's requests/s (spawn + kill + wait,
  pipelined, simulated dispatchers), spawn + wait of /bin/true per s (8 in
  flight, real workers), one spawn + kill's latency, a worker's own
  memory (USS, median of the workers) and the manager's RSS;
- **live domains, simulated** 1K -> 1M in one core's table: a spawn +
  kill's latency as the table fills, listing every id (µs per 1,000 ids),
  the manager's RSS;
- **live domains, real** 250 -> 5,000 sleeping programs on one core:
  spawn + wait of /bin/true on that core, the worker's USS;
- **clients** 2 -> 1,024 connected (all idle but the one measuring, the
  runtime's monitor counted): a spawn + kill's latency, the manager's RSS.

A latency is one request at a time, so the figure is the path's own cost,
not a queue's.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import psutil

import procmgr
from bench.pipeline import spawn_kill_wait_rate
from bench.spawn import PROGRAM, QUIET, runtime_rate

CORES = (1, 2, 4, 8, 16, 32, 64)
LIVE_SIMULATED = (1_000, 10_000, 100_000, 1_000_000)
LIVE_REAL = (250, 1_000, 2_500, 5_000)
CLIENTS = (2, 16, 64, 256, 1_024)
QUICK = {"cores": (1, 4), "live_simulated": (1_000, 10_000), "live_real": (50, 250),
         "clients": (2, 64), "domains": 300, "runs": 1, "samples": 200, "spawns": 20}
FULL = {"cores": CORES, "live_simulated": LIVE_SIMULATED, "live_real": LIVE_REAL,
        "clients": CLIENTS, "domains": 3_000, "runs": 5, "samples": 2_000, "spawns": 200}
MB = 2**20
WINDOW = 256      # requests in flight while a table is filled


def control_plane_rate(pm, cores: int, domains: int = 600, in_flight: int = 256) -> float:
    """spawn + kill + wait requests/s, pipelined, against simulated dispatchers."""
    return spawn_kill_wait_rate(pm, cores, domains, in_flight)


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    """(p50, p99) in µs."""
    s = sorted(samples_ns)
    return s[len(s) // 2] / 1e3, s[min(len(s) - 1, (len(s) * 99) // 100)] / 1e3


def simulated_latency(pm, cores: int, n: int) -> tuple[float, float]:
    """One spawn + kill of a simulated domain at a time, cycling the cores."""
    samples = []
    for i in range(n):
        t = time.perf_counter_ns()
        pm.kill(pm.spawn(["sim"], core=i % cores, timeout=30), timeout=30)
        samples.append(time.perf_counter_ns() - t)
    return percentiles(samples)


def real_latency(pm, core: int, n: int) -> tuple[float, float]:
    """One spawn + wait of /bin/true at a time on ``core``."""
    samples = []
    for _ in range(n):
        t = time.perf_counter_ns()
        pm.wait(pm.spawn(PROGRAM, core=core, timeout=30, **QUIET), timeout=30)
        samples.append(time.perf_counter_ns() - t)
    return percentiles(samples)


def fill(pm, argv: list[str], core: int, n: int, **options) -> list:
    """``n`` live domains on ``core``, WINDOW spawns in flight at a time."""
    domains, futures = [], []
    for _ in range(n):
        futures.append(pm.spawn_async(argv, core=core, **options))
        if len(futures) >= WINDOW:
            domains += [pm.wait_for(f, timeout=120) for f in futures]
            futures = []
    return domains + [pm.wait_for(f, timeout=120) for f in futures]


def empty(pm, domains: list) -> None:
    for start in range(0, len(domains), WINDOW):
        kills = [pm.kill_async(d) for d in domains[start:start + WINDOW]]
        for f in kills:
            pm.wait_for(f, timeout=120)


def workers(rt) -> list[psutil.Process]:
    return [p for p in psutil.Process(rt.proc.pid).children() if "--core" in p.cmdline()]


def manager_rss_mb(rt) -> float:
    return psutil.Process(rt.proc.pid).memory_info().rss / MB


def cores_curve(cores_list, domains: int, runs: int, samples: int, spawns: int) -> list[dict]:
    rows = []
    cpus = os.cpu_count() or 1
    for cores in cores_list:
        start = time.monotonic()
        with procmgr.Runtime(cores=cores, simulate=True) as rt:
            pm = rt.client()
            for core in range(cores):            # every core has answered
                pm.kill(pm.spawn(["sim"], core=core, timeout=30), timeout=30)
            up = time.monotonic() - start
            control_plane_rate(pm, cores, 50)              # warm up
            cp = statistics.median(control_plane_rate(pm, cores, domains)
                                   for _ in range(runs))
            p50, p99 = simulated_latency(pm, cores, samples)
            uss = statistics.median(w.memory_full_info().uss for w in workers(rt)) / MB
            rss = manager_rss_mb(rt)
        with procmgr.Runtime(cores=cores) as rt:
            pm = rt.client()
            runtime_rate(pm, 20, 8, cores)
            sp = runtime_rate(pm, spawns, 8, cores)
        rows.append({"cores": cores, "cpus": cpus, "oversubscribed": cores > cpus,
                     "up_s": up, "control_plane_per_s": cp, "spawn_per_s": sp,
                     "p50_us": p50, "p99_us": p99, "worker_uss_mb": uss,
                     "manager_rss_mb": rss})
    return rows


def live_simulated_curve(counts, samples: int) -> list[dict]:
    rows = []
    with procmgr.Runtime(cores=1, simulate=True) as rt:
        pm = rt.client()
        live: list = []
        for n in counts:
            live += fill(pm, ["sim"], 0, n - len(live))
            p50, p99 = simulated_latency(pm, 1, samples)
            t = time.perf_counter_ns()
            listed = len(pm.domains(timeout=600))
            per_1000 = (time.perf_counter_ns() - t) / 1e3 / max(1, listed) * 1000
            rows.append({"live": n, "p50_us": p50, "p99_us": p99,
                         "list_us_per_1000": per_1000, "manager_rss_mb": manager_rss_mb(rt)})
        empty(pm, live)
    return rows


def live_real_curve(counts, samples: int) -> list[dict]:
    rows = []
    with procmgr.Runtime(cores=1) as rt:
        pm = rt.client()
        real_latency(pm, 0, 20)
        live: list = []
        try:
            for n in counts:
                live += fill(pm, ["/bin/sleep", "3600"], 0, n - len(live), **QUIET)
                p50, p99 = real_latency(pm, 0, samples)
                rows.append({"live": n, "p50_us": p50, "p99_us": p99,
                             "worker_uss_mb": workers(rt)[0].memory_full_info().uss / MB})
        finally:
            empty(pm, live)
    return rows


def clients_curve(counts, samples: int) -> list[dict]:
    rows = []
    with procmgr.Runtime(cores=2, simulate=True) as rt:
        pm = rt.client()
        idle: list = []
        try:
            for n in counts:
                while len(idle) < n - 2:         # the monitor and pm are two
                    idle.append(procmgr.connect(rt.name, timeout=30))
                p50, p99 = simulated_latency(pm, 2, samples)
                rows.append({"clients": n, "p50_us": p50, "p99_us": p99,
                             "manager_rss_mb": manager_rss_mb(rt)})
        finally:
            for client in idle:
                client.close()
    return rows


def measure(quick: bool = False, **sizes) -> dict:
    """Every curve (``sizes`` overrides QUICK/FULL's entries, by name)."""
    p = dict(QUICK if quick else FULL, **sizes)
    return {"cores": cores_curve(p["cores"], p["domains"], p["runs"], p["samples"], p["spawns"]),
            "live_simulated": live_simulated_curve(p["live_simulated"], p["samples"]),
            "live_real": live_real_curve(p["live_real"], max(20, p["samples"] // 10)),
            "clients": clients_curve(p["clients"], p["samples"])}


def table(results: dict) -> str:
    lines = ["| cores | every core answered after | control plane, requests/s (simulated) | "
             "spawn + wait /bin/true per s (8 in flight) | spawn + kill p50 / p99 | "
             "worker's own memory (USS) | manager RSS | |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["cores"]:
        note = f"oversubscribed ({r['cpus']} CPUs)" if r["oversubscribed"] else ""
        lines.append(f"| {r['cores']} | {r['up_s']:.2f} s | {r['control_plane_per_s']:,.0f} | "
                     f"{r['spawn_per_s']:,.0f} | {r['p50_us']:.0f} / {r['p99_us']:.0f} µs | "
                     f"{r['worker_uss_mb']:.1f} MB | {r['manager_rss_mb']:.0f} MB | {note} |")
    lines += ["", "| live domains (simulated, one core) | spawn + kill p50 / p99 | "
              "listing, per 1,000 ids | manager RSS |", "|---:|---:|---:|---:|"]
    for r in results["live_simulated"]:
        lines.append(f"| {r['live']:,} | {r['p50_us']:.0f} / {r['p99_us']:.0f} µs | "
                     f"{r['list_us_per_1000']:.0f} µs | {r['manager_rss_mb']:.0f} MB |")
    lines += ["", "| live programs on the core (real) | spawn + wait /bin/true p50 / p99 | "
              "worker's own memory (USS) |", "|---:|---:|---:|"]
    for r in results["live_real"]:
        lines.append(f"| {r['live']:,} | {r['p50_us']:.0f} / {r['p99_us']:.0f} µs | "
                     f"{r['worker_uss_mb']:.1f} MB |")
    lines += ["", "| clients connected (one active) | spawn + kill p50 / p99 | manager RSS |",
              "|---:|---:|---:|"]
    for r in results["clients"]:
        lines.append(f"| {r['clients']:,} | {r['p50_us']:.0f} / {r['p99_us']:.0f} µs | "
                     f"{r['manager_rss_mb']:.0f} MB |")
    lines.append("\nLatencies: one request at a time (spawn + kill of a simulated domain, or "
                 "spawn + wait of /bin/true), p50 / p99. Control plane: one client keeping 256 "
                 "requests in flight (bench/pipeline.py), the median of its runs. "
                 "Reproduce: `.venv/bin/python -m bench.scale`.")
    return "\n".join(lines)


CURVES = (("cores", "cores", "simulated cores"),
          ("live_simulated", "live", "live domains (simulated, one core)"),
          ("live_real", "live", "live programs on one core (real)"),
          ("clients", "clients", "clients connected (one active)"))


def _short(n: int) -> str:
    for unit, name in ((1_000_000, "M"), (1_000, "K")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n:,}"


def plot(results: dict, path: str) -> None:
    """The four curves side by side: p50 and p99 (log scale), memory on the
    right-hand axis; oversubscribed cores shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (curve, key, label) in zip(axes, CURVES):
        rows = results[curve]
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["p50_us"] for r in rows], "o-", label="p50")
        ax.plot(xs, [r["p99_us"] for r in rows], "s-", label="p99")
        ax.set_xscale("log")
        ax.set_xticks(xs, [_short(x) for x in xs], fontsize=8)
        ax.minorticks_off()
        ax.set_ylim(bottom=0, top=max(r["p99_us"] for r in rows) * 1.35)
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("latency, µs", fontsize=9)
        if curve == "cores" and any(r["oversubscribed"] for r in rows):
            first = min(r["cores"] for r in rows if r["oversubscribed"])
            ax.axvspan(first * 0.85, max(xs) * 1.15, color="0.92", label="oversubscribed")
        memory = "worker_uss_mb" if "worker_uss_mb" in rows[0] else "manager_rss_mb"
        twin = ax.twinx()
        twin.plot(xs, [r[memory] for r in rows], "^--", color="tab:green",
                  label="worker USS" if memory == "worker_uss_mb" else "manager RSS")
        twin.set_ylabel("MB", fontsize=9)
        twin.set_ylim(bottom=0, top=max(r[memory] for r in rows) * 1.35)
        handles = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left",
                  ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    results = measure(quick)
    print(table(results))
    if "--plot" in sys.argv[1:]:
        plot(results, sys.argv[sys.argv.index("--plot") + 1])
    sys.exit(0)
