"""Many clients at once, each its own process keeping 4 requests in
flight (spawn + kill + wait, simulated dispatchers, 2 cores):
`python -m bench.clients [N:DOMAINS ...]` (default 16:2000 256:250, twice).

For each: total requests/s; fairness two ways -- the slowest client's
rate over the fastest's, each over its own run (which the first and last
to be scheduled distort: the last runs nearly alone), and the fewest
answers any client got over the most while every client was running (the
window from the last one's start to the first one's end: the share each
got while all competed); and where the CPU went per request -- the
clients' (getrusage in each) and the manager's (/proc/PID/schedstat).

Clients are forked from this process once it has imported procmgr, each
connects, then all start together and each reports."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time

import procmgr
from bench.pipeline import PER_DOMAIN, spawn_kill_wait_rate


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _client(name: str, go_r: int, done_w: int, domains: int, out: str) -> None:
    """In a forked client: connect, wait for go, run, write its report to
    ``out`` and say so in one short line (atomic on a pipe: a report itself
    is too long to be written there whole by many clients at once)."""
    pm = procmgr.connect(name, timeout=60)
    os.read(go_r, 1)
    times: list[float] = []
    cpu = _cpu_s()
    start = time.monotonic()
    rate = spawn_kill_wait_rate(pm, 2, domains, 4, answered_at=times)
    report = {"rate": rate, "start": start, "times": times, "cpu_s": _cpu_s() - cpu}
    with open(out, "w") as f:
        json.dump(report, f, separators=(",", ":"))
    os.write(done_w, b".\n")


def _manager_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def run(rt, n: int, domains: int) -> dict:
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    reports_dir = tempfile.mkdtemp(prefix="procmgr-bench-clients-")
    for k in range(n):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(done_r)
                os.close(go_w)
                _client(rt.name, go_r, done_w, domains, os.path.join(reports_dir, str(k)))
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    os.close(done_w)
    os.close(go_r)
    time.sleep(1.0 + n / 100)              # all connected (each reads go after)
    manager_cpu = _manager_cpu_s(rt.proc.pid)
    start = time.monotonic()
    os.write(go_w, b"x" * n)
    data = b""
    while data.count(b"\n") < n:
        chunk = os.read(done_r, 1 << 20)
        if not chunk:
            break
        data += chunk
    wall = time.monotonic() - start
    manager_cpu = _manager_cpu_s(rt.proc.pid) - manager_cpu
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(done_r)
    os.close(go_w)
    reports = []
    for k in range(n):
        try:
            with open(os.path.join(reports_dir, str(k))) as f:
                reports.append(json.load(f))
        except FileNotFoundError:
            pass
    shutil.rmtree(reports_dir, ignore_errors=True)
    if len(reports) != n:
        raise RuntimeError(f"{n - len(reports)} of {n} clients did not report")
    requests = n * domains * PER_DOMAIN
    rates = [r["rate"] for r in reports]
    # While all ran: from the last start to the first finish.
    lo = max(r["start"] for r in reports)
    hi = min(r["times"][-1] for r in reports)
    shares = [sum(lo <= t <= hi for t in r["times"]) for r in reports]
    return {"clients": n, "requests_per_s": requests / wall,
            "fairness": min(rates) / max(rates),
            "fairness_together": min(shares) / max(shares) if max(shares) else 0.0,
            "together_s": max(0.0, hi - lo), "shares": shares,
            "client_cpu_us": sum(r["cpu_s"] for r in reports) / requests * 1e6,
            "manager_cpu_us": manager_cpu / requests * 1e6}


def table(rows: list[dict]) -> str:
    lines = ["| clients | requests/s, total | fairness, own runs (min/max) | "
             "fairness, all running (min/max) | client CPU per request | "
             "manager CPU per request |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests_per_s']:,.0f} | {r['fairness']:.2f} | "
                     f"{r['fairness_together']:.2f} ({r['together_s']:.1f} s) | "
                     f"{r['client_cpu_us']:.1f} µs | {r['manager_cpu_us']:.1f} µs |")
    return "\n".join(lines)


def main(args: list[str]) -> int:
    plan = [tuple(map(int, a.split(":"))) for a in args] or [(16, 2000), (256, 250)] * 2
    rows = []
    with procmgr.Runtime(cores=2, simulate=True) as rt:
        for n, domains in plan:
            rows.append(run(rt, n, domains))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
