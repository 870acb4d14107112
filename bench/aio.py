"""The asyncio client against its peers, in one run (`python -m bench.aio`).

- One at a time: spawn + wait of /bin/true through the async client
  against the sync client on the same runtime, in interleaved blocks
  (bench/spawn.py's ``interleaved``): what the event loop costs a caller.
- Many at once: N concurrent awaited spawn + wait in one event loop,
  against ``asyncio.create_subprocess_exec`` + ``wait()`` of the same
  program, rounds interleaved.

Output goes to /dev/null on both sides (the runtime's DEVNULL, the
subprocess's DEVNULL), like for like."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

import procmgr
from bench.spawn import PROGRAM, QUIET
from bench.stats import median_interval


def sync_rate(pm, n: int, cores: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        pm.wait(pm.spawn(PROGRAM, core=i % cores, timeout=30, **QUIET), timeout=30)
    return n / (time.perf_counter() - start)


async def async_rate(apm, n: int, cores: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await apm.wait(await apm.spawn(PROGRAM, core=i % cores, timeout=30, **QUIET),
                       timeout=30)
    return n / (time.perf_counter() - start)


async def async_many_rate(apm, n: int, cores: int) -> float:
    async def one(i: int) -> int:
        return await apm.wait(await apm.spawn(PROGRAM, core=i % cores, **QUIET), timeout=60)

    start = time.perf_counter()
    statuses = await asyncio.gather(*(one(i) for i in range(n)))
    rate = n / (time.perf_counter() - start)
    assert statuses == [0] * n, "a /bin/true did not end with 0"
    return rate


async def subprocess_many_rate(n: int) -> float:
    async def one() -> int:
        proc = await asyncio.create_subprocess_exec(
            *PROGRAM, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return await proc.wait()

    start = time.perf_counter()
    statuses = await asyncio.gather(*(one() for _ in range(n)))
    rate = n / (time.perf_counter() - start)
    assert statuses == [0] * n, "a /bin/true did not end with 0"
    return rate


async def _compare(rt, block: int, blocks: int, many: int, rounds: int, cores: int) -> dict:
    pm, apm = rt.client(), await rt.aclient()
    sync_rate(pm, block, cores)                         # warm: workers have started up
    await async_rate(apm, block, cores)
    # Interleaved as bench/spawn.py's blocks are. The sync client's run
    # from within the loop, which waits meanwhile (nothing else is on it).
    one = {"sync": [], "async": []}
    for i in range(blocks):
        order = ("sync", "async") if i % 2 == 0 else ("async", "sync")
        for name in order:
            one[name].append(sync_rate(pm, block, cores) if name == "sync"
                             else await async_rate(apm, block, cores))
    many_rates = {"procmgr": [], "asyncio": []}
    for i in range(rounds):
        order = ("procmgr", "asyncio") if i % 2 == 0 else ("asyncio", "procmgr")
        for name in order:
            many_rates[name].append(await async_many_rate(apm, many, cores) if name == "procmgr"
                                    else await subprocess_many_rate(many))
    apm.close()
    paired1 = [a / s for a, s in zip(one["async"], one["sync"])]
    paired_many = [p / a for p, a in zip(many_rates["procmgr"], many_rates["asyncio"])]
    return {"medians": {"sync1": statistics.median(one["sync"]),
                        "async1": statistics.median(one["async"]),
                        "procmgr_many": statistics.median(many_rates["procmgr"]),
                        "asyncio_many": statistics.median(many_rates["asyncio"])},
            "ratio1": statistics.median(paired1), "interval1": median_interval(paired1),
            "ratio_many": statistics.median(paired_many), "rounds": rounds,
            "block": block, "blocks": blocks, "many": many, "cores": cores,
            "cpus": os.cpu_count()}


def compare(block: int = 50, blocks: int = 40, many: int = 1000, rounds: int = 5,
            cores: int = 2) -> dict:
    with procmgr.Runtime(cores=cores) as rt:
        return asyncio.run(_compare(rt, block, blocks, many, rounds, cores))


def table(r: dict) -> str:
    m = r["medians"]
    lo, hi, level = r["interval1"]
    return "\n".join([
        "| spawn + wait of /bin/true, per s | procmgr async client | peer | async / peer |",
        "|---|---:|---:|---:|",
        f"| one at a time, against the sync client | {m['async1']:,.0f} | {m['sync1']:,.0f} | "
        f"{r['ratio1']:.2f}x ({lo:.2f}–{hi:.2f}x) |",
        f"| {r['many']:,} at once in one event loop, against "
        f"`asyncio.create_subprocess_exec` | {m['procmgr_many']:,.0f} | "
        f"{m['asyncio_many']:,.0f} | {r['ratio_many']:.2f}x |",
        f"\nOne at a time: {r['blocks']} blocks of {r['block']} each, the two clients "
        f"interleaved, the median of the blocks' ratios with its {level:.0%} interval. "
        f"At once: {r['rounds']} interleaved rounds, the median of their ratios. "
        f"{r['cores']} cores on {r['cpus']} CPUs. Reproduce: `.venv/bin/python -m bench.aio`.",
    ])


def main() -> int:
    print(table(compare()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
