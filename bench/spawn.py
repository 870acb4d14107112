"""Spawn-and-wait of /bin/true through the runtime against raw
os.posix_spawn + waitpid, in one run (`python -m bench.spawn`).

Like for like: raw gives the program no output files, so the runtime's
spawns here send stdout and stderr to /dev/null (DEVNULL) rather than
capture them; what capture costs is bench/output.py's."""

from __future__ import annotations

import collections
import functools
import os
import statistics
import sys
import time

import procmgr
from bench.stats import median_interval, median_p99_us

PROGRAM = ["/bin/true"]
QUIET = {"stdout": procmgr.DEVNULL, "stderr": procmgr.DEVNULL}


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


def popen_rate(n: int, in_flight: int) -> float:
    """subprocess.Popen + wait: what most Python code uses."""
    import subprocess

    pending = collections.deque()
    start = time.perf_counter()
    for _ in range(n):
        pending.append(subprocess.Popen(PROGRAM))
        if len(pending) >= in_flight:
            pending.popleft().wait()
    while pending:
        pending.popleft().wait()
    return n / (time.perf_counter() - start)


def _noop() -> None:
    pass


def mp_process_rate(n: int, in_flight: int) -> float:
    """multiprocessing.Process (fork) + join: a Python function, not a program."""
    import multiprocessing as mp
    import warnings

    ctx = mp.get_context("fork")
    pending = collections.deque()
    start = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=_noop)
        with warnings.catch_warnings():
            # Python 3.12+ warns on fork with threads running (the Runtime's
            # guard); the child here only returns, so it is safe.
            warnings.simplefilter("ignore", DeprecationWarning)
            p.start()
        pending.append(p)
        if len(pending) >= in_flight:
            pending.popleft().join()
    while pending:
        pending.popleft().join()
    return n / (time.perf_counter() - start)


def runtime_rate(pm, n: int, in_flight: int, cores: int) -> float:
    spawns, waits = collections.deque(), []
    start = time.perf_counter()
    for i in range(n):
        spawns.append(pm.spawn_async(PROGRAM, core=i % cores, **QUIET))
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
        d = pm.spawn(PROGRAM, core=i % cores, timeout=30, **QUIET)
        samples.append(time.perf_counter_ns() - t)
        pm.wait(d, timeout=30)
    return median_p99_us(samples)


def interleaved(measures: dict, blocks: int) -> dict[str, list[float]]:
    """Each measure's rate once per block, the order reversed every other
    block (A, B, C, then C, B, A): every block is taken next to the
    conditions of its neighbours. This machine's speed drifts by ±10% within
    seconds, and rounds measured one after the other put that drift into
    their ratio; blocks of ~50 spawns a few tens of ms apart keep it out."""
    names = list(measures)
    rates = {name: [] for name in names}
    for i in range(blocks):
        for name in names if i % 2 == 0 else reversed(names):
            rates[name].append(measures[name]())
    return rates


def compare(n: int = 400, rounds: int = 9, cores: int = 2, block: int = 50,
            blocks: int = 120) -> dict:
    res = {k: [] for k in ("popen1", "mp1", "raw8", "rt8", "popen8", "mp8")}
    with procmgr.Runtime(cores=cores) as rt:
        pm = rt.client()
        runtime_rate(pm, max(10, n // 10), 1, cores)      # warm: workers have started up
        # One at a time, the target that is closest: runtime against raw in
        # interleaved blocks (as bench.ab does), so the interval below says
        # how well the ratio is known, not how far the machine drifted.
        res.update(interleaved({"raw1": functools.partial(raw_rate, block, 1),
                                "rt1": functools.partial(runtime_rate, pm, block, 1, cores)},
                               blocks))
        for _ in range(rounds):
            res["raw8"].append(raw_rate(n, 8))
            res["rt8"].append(runtime_rate(pm, n, 8, cores))
            for k in (1, 8):
                res[f"popen{k}"].append(popen_rate(n, k))
                res[f"mp{k}"].append(mp_process_rate(n, k))
        lat = spawn_latency_us(pm, n // 2, cores)
    med = {k: statistics.median(v) for k, v in res.items()}
    # Each block's (one at a time) or round's (8 in flight) runtime against
    # the raw next to it, then the median: a ratio of rates measured seconds
    # apart would carry the machine's drift (raw alone moved by 20% within
    # one run). The median comes with an interval (bench/stats.py): a target
    # is met when all of it is above, not when one run's median happens to be.
    paired = {k: [rt / raw for rt, raw in zip(res[f"rt{k}"], res[f"raw{k}"])] for k in (1, 8)}
    return {"medians": med, "latency_us": lat,
            "ratio1": statistics.median(paired[1]), "ratio8": statistics.median(paired[8]),
            "interval1": median_interval(paired[1]), "interval8": median_interval(paired[8]),
            "rounds": rounds, "block": block, "blocks": blocks, "cores": cores,
            "cpus": os.cpu_count()}


def table(r: dict) -> str:
    m = r["medians"]
    return "\n".join([
        "| spawn + wait of /bin/true, per s | raw posix_spawn + waitpid | runtime | "
        "runtime / raw | subprocess.Popen | multiprocessing.Process (fork, no exec) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| one at a time | {m['raw1']:,.0f} | {m['rt1']:,.0f} | {r['ratio1']:.2f}x | "
        f"{m['popen1']:,.0f} | {m['mp1']:,.0f} |",
        f"| 8 in flight | {m['raw8']:,.0f} | {m['rt8']:,.0f} | {r['ratio8']:.2f}x | "
        f"{m['popen8']:,.0f} | {m['mp8']:,.0f} |",
        f"\nClient-measured spawn latency: median {r['latency_us'][0]:,.0f} µs, "
        f"p99 {r['latency_us'][1]:,.0f} µs. One at a time: {r['blocks']} blocks of "
        f"{r['block']} spawns each, runtime and raw interleaved; 8 in flight, Popen and "
        f"multiprocessing: {r['rounds']} interleaved rounds. Rates: medians; runtime / raw: "
        f"the median of each block's or round's ratio, and where that median "
        f"lies with {r['interval1'][2]:.0%} confidence (one at a time "
        f"{r['interval1'][0]:.2f}–{r['interval1'][1]:.2f}x, 8 in flight "
        f"{r['interval8'][0]:.2f}–{r['interval8'][1]:.2f}x; bench/stats.py). {r['cores']} "
        f"cores on {r['cpus']} CPUs. Reproduce: `.venv/bin/python -m bench.spawn`.",
    ])


def main() -> int:
    print(table(compare()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
