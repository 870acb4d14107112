"""One client flooding the manager, the others' latency beside it, in one
run (`python -m bench.fairness`).

A victim client times round trips of a request the manager answers in C
(wait with nohang, for a domain that sleeps). Blocks with and without the
attack alternate: the attacker is one process, stopped (SIGSTOP) and
continued (SIGCONT) between blocks, so both kinds of block see the same
machine. Attacks:

- flood: a client sending requests as fast as it can (batches of 256
  waits with nohang, then taking the answers), never idle;
- doorbell: a process writing its doorbell to the manager (the eventfd
  each client is given) in a tight loop, waking it for nothing;
- and, for scale, a process that only burns a CPU and never touches the
  runtime: what an attacker costs the others on this machine just by
  running.

Reported: the victim's median and 99th percentile per kind of block, and
the ratio loaded / unloaded (the target: p99 within 3x). On a 2-CPU
machine the attacker also takes a CPU from everybody; what the ratio
measures is that the manager's loop goes round every peer (a budget per
peer per pass, procmgr/manager/core/_core.h) and never stops looking at the others.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time

import procmgr

FLOODER = """
import sys, procmgr
pm = procmgr.connect(sys.argv[1])
d = pm.spawn(["/bin/sleep", "3600"], timeout=10)
print("ready", flush=True)
while True:
    futures = [pm.wait_async(d, nohang=True) for _ in range(256)]
    for f in futures:
        pm.wait_for(f, timeout=10)
"""

HOG = """
print("ready", flush=True)
while True:
    pass
"""

BELL = """
import os, sys, procmgr
pm = procmgr.connect(sys.argv[1])
print("ready", flush=True)
fd = pm._doorbell
while True:
    os.eventfd_write(fd, 1)
"""


def victim_block(pm, d, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        pm.wait(d, nohang=True, timeout=10)
        out.append(time.perf_counter() - t)
    return out


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98]


def measure(rt, script: str, blocks: int, n: int) -> dict:
    pm = rt.client()
    d = pm.spawn(["/bin/sleep", "3600"], timeout=10)
    attacker = subprocess.Popen([sys.executable, "-c", script, rt.name],
                                stdout=subprocess.PIPE)
    try:
        assert attacker.stdout.readline() == b"ready\n"
        quiet, loud = [], []
        for _ in range(blocks):
            attacker.send_signal(signal.SIGSTOP)
            time.sleep(0.05)
            quiet += victim_block(pm, d, n)
            attacker.send_signal(signal.SIGCONT)
            time.sleep(0.05)
            loud += victim_block(pm, d, n)
    finally:
        attacker.kill()
        attacker.wait()
        pm.kill(d, timeout=10)
    return {"quiet_p50": statistics.median(quiet), "quiet_p99": p99(quiet),
            "loud_p50": statistics.median(loud), "loud_p99": p99(loud)}


def main() -> int:
    blocks, n = (3, 200) if "--quick" in sys.argv else (10, 500)
    rows = []
    with procmgr.Runtime(cores=2) as rt:
        for name, script in (("flooding client", FLOODER), ("doorbell flood", BELL),
                             ("(control) a process burning a CPU, no runtime", HOG)):
            r = measure(rt, script, blocks, n)
            rows.append(
                f"| {name} | {r['quiet_p50'] * 1e6:,.0f} / {r['quiet_p99'] * 1e6:,.0f} | "
                f"{r['loud_p50'] * 1e6:,.0f} / {r['loud_p99'] * 1e6:,.0f} | "
                f"{r['loud_p99'] / r['quiet_p99']:.2f}x |")
    print("| attack | victim's round trip without, µs (p50 / p99) | with | p99 with / without |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\n{blocks} blocks of {n} round trips each way, alternating; {os.cpu_count()} CPUs. "
          f"Reproduce: `.venv/bin/python -m bench.fairness`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
