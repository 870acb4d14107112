"""`procmgr storm`: hammer a runtime of its own with real programs from
several client processes, checking as it goes.

Each client process runs a random mix of spawn, kill, wait and span
against real programs whose outcome it knows in advance (``sh -c 'exit K'``
must wait to K; a ``sleep`` it kills must wait to 9), and reports: requests
sent and answered, answers that matched nothing (duplicates), requests
never answered (lost), wrong exit statuses, errors by code, latencies. The
parent adds it up and, after shutting the runtime down, looks for zombies,
orphans and leaked segments.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter

import psutil

from procmgr.errors import Err, ProcMgmtError

DEFAULT_MIX = {"spawn": 4, "kill": 2, "wait": 3, "span": 1}
ANSWER_TIMEOUT = 30.0


def parse_mix(text: str | None) -> dict[str, int]:
    if not text:
        return dict(DEFAULT_MIX)
    mix = {}
    for part in text.split(","):
        op, sep, weight = part.partition("=")
        if op not in DEFAULT_MIX or not sep or not weight.isdigit():
            raise ValueError(f"--mix entry {part!r} is not OP=WEIGHT with OP one of "
                             f"{', '.join(DEFAULT_MIX)}")
        mix[op] = int(weight)
    if not any(mix.values()):
        raise ValueError("--mix gives every operation weight 0")
    return mix


# ---- one client process ---------------------------------------------------------


def client_main(name: str, ops: int, cores: int, mix: dict, seed: int) -> dict:
    from procmgr.runtime import connect

    rnd = random.Random(seed)
    pm = connect(name)
    expected: dict = {}           # Domain -> expected wait status
    long_running: list = []       # sleeping domains not yet killed
    stats = Counter()
    errors = Counter()
    latencies: list[float] = []

    def timed(call):
        t = time.perf_counter()
        try:
            return call()
        finally:
            latencies.append(time.perf_counter() - t)
            stats["answered"] += 1

    choices, weights = zip(*mix.items())
    for _ in range(ops):
        op = rnd.choices(choices, weights)[0]
        stats["sent"] += 1
        try:
            if op == "spawn" or not expected:
                if rnd.random() < 0.5:
                    k = rnd.randrange(0, 100)
                    d = timed(lambda: pm.spawn(["/bin/sh", "-c", f"exit {k}"],
                                               core=rnd.randrange(cores), timeout=ANSWER_TIMEOUT))
                    expected[d] = k
                else:
                    d = timed(lambda: pm.spawn(["/bin/sleep", "30"], core=rnd.randrange(cores),
                                               timeout=ANSWER_TIMEOUT))
                    expected[d] = None
                    long_running.append(d)
            elif op == "kill" and long_running:
                d = long_running.pop(rnd.randrange(len(long_running)))
                timed(lambda: pm.kill(d, timeout=ANSWER_TIMEOUT))
                expected[d] = 9
            elif op == "span" and long_running:
                d = rnd.choice(long_running)
                try:
                    timed(lambda: pm.span(d, rnd.randrange(cores), timeout=ANSWER_TIMEOUT))
                except ProcMgmtError as e:
                    if e.code != Err.ALREADY_SPANNED:   # a core it has: defined, fine
                        raise
            else:
                known = [d for d, s in expected.items() if s is not None]
                if known:
                    d = rnd.choice(known)
                    got = timed(lambda: pm.wait(d, timeout=ANSWER_TIMEOUT))
                    stats["checked"] += 1
                    if got != expected[d]:
                        stats["wrong_status"] += 1
                else:
                    stats["sent"] -= 1
        except ProcMgmtError as e:
            errors[e.code.name if isinstance(e.code, Err) else str(e.code)] += 1
        except TimeoutError:
            stats["lost"] += 1
        stats["progress"] += 1
        if stats["progress"] % 20 == 0:
            print(json.dumps({"progress": stats["progress"]}), flush=True)
    # Finish: kill what still sleeps, and check every outcome once more.
    for d in long_running:
        stats["sent"] += 1
        try:
            timed(lambda: pm.kill(d, timeout=ANSWER_TIMEOUT))
            expected[d] = 9
        except ProcMgmtError as e:
            errors[e.code.name] += 1
    for d, want in expected.items():
        stats["sent"] += 1
        try:
            got = timed(lambda: pm.wait(d, timeout=ANSWER_TIMEOUT))
            stats["checked"] += 1
            stats["wrong_status"] += got != want
        except ProcMgmtError as e:
            errors[e.code.name] += 1
        except TimeoutError:
            stats["lost"] += 1
    stats["duplicates"] = pm.unmatched_answers
    pm.close()
    return {"stats": dict(stats), "errors": dict(errors), "latencies": latencies}


# ---- the parent ------------------------------------------------------------------


def storm(cores: int, clients: int, ops: int, mix: dict, progress=None) -> dict:
    from procmgr.runtime import Runtime

    name = f"procmgr-storm-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    start = time.perf_counter()
    rt = Runtime(cores=cores, name=name).start()
    manager_pid = rt.proc.pid
    procs = []
    try:
        for i in range(clients):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "procmgr.storm", name, str(ops), str(cores),
                 json.dumps(mix), str(i)], stdout=subprocess.PIPE, text=True))
        results = []
        done = [0] * clients
        for i, p in enumerate(procs):
            for line in p.stdout:
                msg = json.loads(line)
                if "progress" in msg:
                    done[i] = msg["progress"]
                    if progress:
                        progress(sum(done))
                else:
                    results.append(msg)
            p.wait(timeout=ANSWER_TIMEOUT * 4)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
        rt.close()
    wall = time.perf_counter() - start
    return summarize(results, wall, manager_pid, name)


def summarize(results: list[dict], wall: float, manager_pid: int, name: str) -> dict:
    stats, errors, lat = Counter(), Counter(), []
    for r in results:
        stats.update(r["stats"])
        errors.update(r["errors"])
        lat += r["latencies"]
    lat.sort()
    pct = (lambda q: round(1e3 * lat[min(len(lat) - 1, int(q * len(lat)))], 3)) if lat else \
        (lambda q: None)
    marker = f"PROCMGR_RUNTIME={name}".encode()
    orphans, zombies = [], []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE and p.ppid() == os.getpid():
                zombies.append(p.pid)
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    orphans.append(p.pid)
        except (psutil.NoSuchProcess, FileNotFoundError, PermissionError, ProcessLookupError):
            pass
    leaked = [e for e in os.listdir("/dev/shm") if e.startswith(f"procmgr-{manager_pid}-")]
    answered = stats["answered"]
    return {
        "ops": stats["sent"], "answered": answered, "ops_per_s": round(answered / wall, 1),
        "latency_ms_p50": pct(0.50), "latency_ms_p99": pct(0.99),
        "errors": dict(errors), "lost": stats["lost"], "duplicated": stats["duplicates"],
        "wrong_status": stats["wrong_status"], "statuses_checked": stats["checked"],
        "zombies": zombies, "orphans": orphans, "leaked_segments": leaked,
        "seconds": round(wall, 2),
    }


def healthy(summary: dict) -> bool:
    return not (summary["lost"] or summary["duplicated"] or summary["wrong_status"]
                or summary["zombies"] or summary["orphans"] or summary["leaked_segments"])


if __name__ == "__main__":
    # A storm client: NAME OPS CORES MIX_JSON SEED
    name, ops, cores, mix, seed = sys.argv[1:6]
    result = client_main(name, int(ops), int(cores), json.loads(mix), int(seed))
    print(json.dumps(result), flush=True)
