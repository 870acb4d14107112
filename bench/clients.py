"""Many clients at once, each its own process keeping 4 requests in
flight (spawn + kill + wait, simulated dispatchers, 2 cores): total
requests/s and fairness (the slowest client's rate over the fastest's):
`python -m bench.clients [N:DOMAINS ...]` (default 16:2000 256:125, twice).

Clients are forked from this process once it has imported procmgr, each
connects, then all start together and each reports its own rate."""

from __future__ import annotations

import json
import os
import sys
import time

import procmgr
from bench.pipeline import spawn_kill_wait_rate


def run(rt, n: int, domains: int) -> dict:
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:                       # a client: connect, wait for go, report
            status = 1
            try:
                os.close(done_r)
                os.close(go_w)
                pm = procmgr.connect(rt.name, timeout=60)
                os.read(go_r, 1)
                rate = spawn_kill_wait_rate(pm, 2, domains, 4)
                os.write(done_w, (json.dumps(rate) + "\n").encode())
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    os.close(done_w)
    os.close(go_r)
    time.sleep(1.0 + n / 100)              # all connected (each reads go after)
    start = time.monotonic()
    os.write(go_w, b"x" * n)
    data = b""
    while data.count(b"\n") < n:
        chunk = os.read(done_r, 65536)
        if not chunk:
            break
        data += chunk
    wall = time.monotonic() - start
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(done_r)
    os.close(go_w)
    rates = [json.loads(line) for line in data.decode().split()]
    if len(rates) != n:
        raise RuntimeError(f"{n - len(rates)} of {n} clients did not report")
    return {"clients": n, "requests_per_s": n * domains * 3 / wall,
            "fairness": min(rates) / max(rates)}


def main(args: list[str]) -> int:
    plan = [tuple(map(int, a.split(":"))) for a in args] or [(16, 2000), (256, 125)] * 2
    print("| clients | requests/s, total | fairness (min/max) |\n|---:|---:|---:|")
    with procmgr.Runtime(cores=2, simulate=True) as rt:
        for n, domains in plan:
            r = run(rt, n, domains)
            print(f"| {n} | {r['requests_per_s']:,.0f} | {r['fairness']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
