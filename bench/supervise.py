"""Restart latency: from a supervised program's end to its next
incarnation running, procmgr against supervisord in the same run
(`python -m bench.supervise`).

The program is bash with builtins only: it appends its clock
($EPOCHREALTIME) as it starts and again just before it exits 1, so the
latency of a restart is the next start's stamp less the last end's --
the exit, its reaping, the decision, the spawn and bash's own start, all
of it, measured by the programs themselves on one clock. procmgr runs it
with restart="always" and no delay; supervisord with autorestart=true
and startsecs=0 (the least it can be told to wait). Each side is also
shown as the runtime sees it: for procmgr, the gap between an
incarnation's end and the next one's start in its history."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import procmgr

SCRIPT = 'echo "s $EPOCHREALTIME" >> "$1"; echo "e $EPOCHREALTIME" >> "$1"; exit 1'
BASH = shutil.which("bash") or "/bin/bash"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def latencies(path: str) -> list[float]:
    """Each start's stamp less the end before it, in seconds."""
    stamps = [line.split() for line in _read(path).splitlines()]
    out, last_end = [], None
    for kind, value in stamps:
        t = float(value)
        if kind == "s" and last_end is not None:
            out.append(t - last_end)
        if kind == "e":
            last_end = t
    return out


def wait_for_lines(path: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and _read(path).count("s ") >= n:
            return
        time.sleep(0.01)
    raise TimeoutError(f"fewer than {n} incarnations within {timeout} s")


def procmgr_run(n: int, tmp: str) -> tuple[list[float], list[float]]:
    out = os.path.join(tmp, "procmgr.txt")
    with procmgr.Runtime(cores=1) as rt:
        pm = rt.client()
        pm.supervise([BASH, "-c", SCRIPT, "bash", out], name="bench", restart="always",
                     backoff=0, max_restarts=None, stdout=procmgr.DEVNULL,
                     stderr=procmgr.DEVNULL, timeout=30)
        wait_for_lines(out, n + 1, 60)
        info = pm.stop_program("bench", timeout=30)
    h = info.history
    seen = [b["started"] - a["ended"] for a, b in zip(h, h[1:])]
    return latencies(out)[:n], seen


def supervisord_run(n: int, tmp: str) -> list[float] | None:
    try:
        import supervisor  # noqa: F401
    except ImportError:
        return None
    out = os.path.join(tmp, "supervisord.txt")
    conf = os.path.join(tmp, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(f"""[supervisord]
nodaemon=true
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
[unix_http_server]
file={tmp}/supervisor.sock
[program:bench]
command={BASH} -c '{SCRIPT}' bash {out}
autorestart=true
startsecs=0
startretries=1000000
stdout_logfile=/dev/null
stderr_logfile=/dev/null
""")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_lines(out, n + 1, 60 + 2 * n)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return latencies(out)[:n]


def crash_loops(programs: int = 100, seconds: float = 30.0, cores: int = 2,
                max_restarts: int | None = None) -> dict:
    """``programs`` supervised /bin/false crash-looping with no backoff for
    ``seconds``, beside another client's spawn + wait of /bin/true: that
    client's p50/p99 against the same with nothing looping, in one run;
    the manager's CPU while it lasts; and whether the restart counts add
    up to the domains the loops made (ids are issued one per domain, in
    order: a probe spawned before and after counts them)."""
    def probe_latencies(pm, duration: float) -> list[float]:
        out, deadline = [], time.monotonic() + duration
        while time.monotonic() < deadline:
            t = time.perf_counter()
            pm.wait(pm.spawn(["/bin/true"], core=len(out) % cores, stdout=procmgr.DEVNULL,
                             stderr=procmgr.DEVNULL, timeout=60), timeout=60)
            out.append(time.perf_counter() - t)
        return out

    import psutil

    with procmgr.Runtime(cores=cores) as rt:
        pm, other = rt.client(), rt.client()
        quiet = probe_latencies(other, min(5.0, seconds))
        manager = psutil.Process(rt.proc.pid)
        first = other.spawn(["/bin/true"], timeout=60)
        other.wait(first, timeout=60)
        cpu0, t0 = sum(manager.cpu_times()[:2]), time.monotonic()
        for i in range(programs):
            pm.supervise_async(["/bin/false"], name=f"loop{i}", core=i % cores, backoff=0,
                               max_restarts=max_restarts, period=seconds,
                               stdout=procmgr.DEVNULL, stderr=procmgr.DEVNULL)
        busy = probe_latencies(other, seconds)
        for i in range(programs):
            pm.stop_program_async(f"loop{i}")
        infos = [pm.wait_program(f"loop{i}", timeout=60) for i in range(programs)]
        cpu = (sum(manager.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
        last = other.spawn(["/bin/true"], timeout=60)
        other.wait(last, timeout=60)
        made = last.id - first.id - 1 - len(busy)        # the loops' domains
        restarts = sum(i.restarts for i in infos)
        left = sum(len(w.children()) for w in manager.children()
                   if "--core" in " ".join(w.cmdline()))
    q, b = sorted(quiet), sorted(busy)
    return {"programs": programs, "seconds": seconds, "restarts": restarts,
            "domains_made": made, "adds_up": made == restarts + programs,
            "manager_cpu": cpu, "states": sorted({i.state for i in infos}),
            "quiet_p50_ms": statistics.median(q) * 1e3,
            "quiet_p99_ms": q[int(len(q) * 0.99)] * 1e3,
            "busy_p50_ms": statistics.median(b) * 1e3,
            "busy_p99_ms": b[int(len(b) * 0.99)] * 1e3, "children_left": left}


def _figures(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_ms": statistics.median(xs) * 1e3,
            "p99_ms": xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3, "n": len(xs)}


def measure(restarts: int = 200, supervisord_restarts: int = 20) -> dict:
    """Both sides, one run: medians and p99s in ms, and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        ours, seen = procmgr_run(restarts, tmp)
        theirs = supervisord_run(supervisord_restarts, tmp) if supervisord_restarts else None
    out = {"procmgr": _figures(ours), "procmgr_seen": _figures(seen),
           "supervisord": None if theirs is None else _figures(theirs)}
    if theirs is not None:
        out["ratio"] = out["supervisord"]["median_ms"] / out["procmgr"]["median_ms"]
    return out


def table(r: dict) -> str:
    def row(label, f):
        return f"| {label} | {f['median_ms']:.2f} | {f['p99_ms']:.2f} | {f['n']} |"

    lines = ["| restart latency, end to next incarnation running | median ms | p99 ms | n |",
             "|---|---:|---:|---:|",
             row("procmgr, stamped by the program", r["procmgr"]),
             row("procmgr, as its history has it", r["procmgr_seen"])]
    if r["supervisord"] is None:
        lines.append("| supervisord | not installed (pip install supervisor) | | |")
    else:
        lines.append(row("supervisord, stamped by the program", r["supervisord"]))
        lines.append(f"\nsupervisord/procmgr, medians: {r['ratio']:.0f}x")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restarts", type=int, default=200, help="restarts measured under procmgr")
    ap.add_argument("--supervisord-restarts", type=int, default=20,
                    help="restarts measured under supervisord (each waits out its 1 s tick)")
    ap.add_argument("--crash-loops", type=int, metavar="N",
                    help="instead: N programs crash-looping beside another client")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long they loop")
    args = ap.parse_args(argv)
    if args.crash_loops:
        print(json.dumps(crash_loops(args.crash_loops, args.seconds), indent=1))
        return
    print(table(measure(args.restarts, args.supervisord_restarts)))


if __name__ == "__main__":
    main()
