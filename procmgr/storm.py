"""`procmgr storm`: hammer a runtime with real programs (or simulated
dispatchers) from several client processes, checking as it goes.

Each client process runs a random mix of spawn, kill, exit, wait and span
whose every outcome it knows in advance: ``sh -c 'exit K'`` must wait to
K; a ``sleep`` it kills must wait to 9; a domain it ends with ``exit K``
must wait to K. With simulated dispatchers (``simulate``) nothing exits by
itself, so every spawn is a long runner, ended by kill or exit. A client
reports requests sent and answered, answers that matched nothing
(duplicates), requests never answered (lost), wrong exit statuses, errors by
code and a latency histogram.

The parent adds it up; it samples the manager's RSS at the start, after a
warm-up and at the end (growth over a soak is a leak), cross-checks the
manager's own count of answers against the clients', and, after shutting the
runtime down, looks for zombies, orphans and leaked segments.

Faults: ``Clients`` runs the client processes against a runtime someone
else owns (a test that injects faults mid-storm). A client told
``faulted_core=K`` (a worker the test kills) accepts what that death
explains -- ``SPAWND_DIED``/``INVALID_SPAWND``/``DOMAIN_NOT_RUNNING`` for
requests on core K or domains with a dispatcher there, and -9 as their
status -- and counts those as ``fault_errors``/``faulted``; anything else
is still wrong. A client whose manager dies stops and says so
(``manager_gone``) instead of hanging.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict

import psutil

from procmgr.errors import Err, ProcMgmtError, RuntimeGone

DEFAULT_MIX = {"spawn": 4, "kill": 2, "wait": 3, "span": 1, "exit": 1}
ANSWER_TIMEOUT = 30.0
# Per client: long runners alive at once, and ended domains not yet waited
# for. Bounded so a soak stays within the manager's history of cleaned
# domains (a wait on an evicted one could not be checked) and the machine's
# process table; past a bound the op becomes a kill or a wait of the oldest.
MAX_RUNNING = 32
MAX_UNWAITED = 200
LATENCY_BUCKET = 1e-5        # latencies are counted in 10 µs buckets
# Errors a worker's death explains, for requests that touch its core.
FAULT_ERRORS = {Err.SPAWND_DIED, Err.INVALID_SPAWND, Err.DOMAIN_NOT_RUNNING}
FAULT_STATUS = -signal.SIGKILL   # what a waiter gets for a domain whose worker died


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


class StormClient:
    """The random mix of one client, every outcome known in advance."""

    def __init__(self, pm, cores: int, mix: dict, seed: int, simulate: bool = False,
                 faulted_core: int | None = None):
        self.pm = pm
        self.cores = cores
        self.rnd = random.Random(seed)
        self.simulate = simulate
        self.faulted_core = faulted_core
        self.choices, self.weights = zip(*[(op, w) for op, w in mix.items() if w])
        self.running: list = []                   # long runners not yet ended
        self.unwaited: OrderedDict = OrderedDict()  # ended (or ending): Domain -> status
        self.touched: dict = {}                   # Domain -> cores it has dispatchers on
        self.stats = Counter()
        self.errors = Counter()                   # unexplained, by code
        self.fault_errors = Counter()             # explained by the faulted core
        self.latency = Counter()                  # 10 µs bucket -> count

    # -- one request, timed and classified --

    def call(self, fn, *args, cores=()):
        """``fn(*args)``; a ProcMgmtError is counted and returned, not raised."""
        self.stats["sent"] += 1
        t = time.perf_counter()
        try:
            result = fn(*args, timeout=ANSWER_TIMEOUT)
        except ProcMgmtError as e:
            name = e.code.name if isinstance(e.code, Err) else str(e.code)
            if self.faulted_core in cores and e.code in FAULT_ERRORS:
                self.fault_errors[name] += 1
            else:
                self.errors[name] += 1
            result = e
        except TimeoutError as e:
            self.stats["lost"] += 1
            return e
        self.latency[int((time.perf_counter() - t) / LATENCY_BUCKET)] += 1
        self.stats["answered"] += 1
        return result

    def faultable(self, cores: set) -> bool:
        return self.faulted_core is not None and self.faulted_core in cores

    # -- the operations --

    def spawn(self) -> None:
        core = self.rnd.randrange(self.cores)
        short = not self.simulate and self.rnd.random() < 0.5
        k = self.rnd.randrange(0, 100)
        argv = ["/bin/sh", "-c", f"exit {k}"] if short else ["/bin/sleep", "3600"]
        d = self.call(functools.partial(self.pm.spawn, core=core), argv, cores=(core,))
        if isinstance(d, Exception):
            return
        self.touched[d] = {core}
        if short:
            self.unwaited[d] = k
        else:
            self.running.append(d)

    def end(self, how: str, d=None) -> None:
        """Kill the domain, or have it exit with a known status."""
        if d is None:
            d = self.running.pop(self.rnd.randrange(len(self.running)))
        else:
            self.running.remove(d)
        if how == "kill":
            want, got = 9, self.call(self.pm.kill, d, cores=self.touched[d])
        else:
            want = self.rnd.randrange(0, 100)
            got = self.call(self.pm.exit, d, want, cores=self.touched[d])
        if isinstance(got, ProcMgmtError) and self.faultable(self.touched[d]):
            want = FAULT_STATUS           # its worker died first and took it along
        self.unwaited[d] = want

    def span(self) -> None:
        """A second dispatcher on a core the domain has none on (a core it
        has gets ALREADY_SPANNED: defined, but it checks nothing new)."""
        d = self.rnd.choice(self.running)
        free = [c for c in range(self.cores) if c not in self.touched[d]]
        if not free:
            return self.spawn()
        core = self.rnd.choice(free)
        pid = self.call(self.pm.span, d, core, cores=self.touched[d] | {core})
        # A span in flight when its worker died counts its core as the
        # domain's (the manager cannot know whether the dispatcher started,
        # and ends the domain with the core): answered SPAWND_DIED.
        if not isinstance(pid, Exception) or \
                isinstance(pid, ProcMgmtError) and pid.code == Err.SPAWND_DIED:
            self.touched[d].add(core)

    def wait(self, d=None) -> None:
        if d is None:
            d = self.rnd.choice(list(self.unwaited))
        want, cores = self.unwaited.pop(d), self.touched.pop(d)
        got = self.call(self.pm.wait, d, cores=cores)
        if isinstance(got, Exception):
            return
        self.stats["checked"] += 1
        if got != want and not (got == FAULT_STATUS and self.faultable(cores)):
            self.stats["wrong_status"] += 1
            print(f"storm: domain {d.id} on cores {sorted(cores)} waited to "
                  f"{got}, expected {want}", file=sys.stderr)
        elif got != want:
            self.stats["faulted"] += 1

    def step(self) -> None:
        op = self.rnd.choices(self.choices, self.weights)[0]
        if len(self.unwaited) >= MAX_UNWAITED:
            return self.wait(next(iter(self.unwaited)))
        if len(self.running) >= MAX_RUNNING and op in ("spawn", "span"):
            return self.end("kill", self.running[0])
        if op in ("kill", "exit", "span") and not self.running or \
                op == "wait" and not self.unwaited:
            op = "spawn"
        if op == "spawn":
            self.spawn()
        elif op == "span":
            self.span()
        elif op == "wait":
            self.wait()
        else:
            self.end(op)

    def finish(self) -> None:
        """Kill what still runs and check every outcome not yet checked."""
        while self.running:
            self.end("kill", self.running[0])
        while self.unwaited:
            self.wait(next(iter(self.unwaited)))

    def report(self) -> dict:
        self.stats["duplicates"] = self.pm.unmatched_answers
        return {"stats": dict(self.stats), "errors": dict(self.errors),
                "fault_errors": dict(self.fault_errors),
                "latency": {str(k): v for k, v in self.latency.items()}}


def client_main(name: str, ops: int, cores: int, mix: dict, seed: int,
                simulate: bool = False, faulted_core: int | None = None) -> dict:
    from procmgr.client.runtime import RuntimeNotFound, connect

    try:
        pm = connect(name)
    except (RuntimeNotFound, ConnectionError):   # it went away before we got in
        return {"stats": {"manager_gone": 1}, "errors": {}, "fault_errors": {}, "latency": {}}
    client = StormClient(pm, cores, mix, seed, simulate, faulted_core)
    every = max(20, ops // 500)
    try:
        for i in range(1, ops + 1):
            client.step()
            if i % every == 0:
                print(json.dumps({"progress": i}), flush=True)
        client.finish()
    except RuntimeGone:       # the manager died or closed our rings
        client.stats["manager_gone"] = 1
    result = client.report()
    pm.close()
    return result


def client_args(name: str, ops: int, cores: int, mix: dict, seed: int,
                simulate: bool = False, faulted_core: int | None = None) -> list[str]:
    """The arguments after ``python`` that start one storm client."""
    args = ["-m", "procmgr.storm", name, str(ops), str(cores), json.dumps(mix), str(seed)]
    if simulate:
        args.append("--simulate")
    if faulted_core is not None:
        args += ["--faulted-core", str(faulted_core)]
    return args


# ---- the parent ------------------------------------------------------------------


class Clients:
    """Storm client processes against a running runtime, read as they go.

    ``popen(*args)`` starts ``python *args`` with stdout and stderr piped (a
    test passes its ``children.python`` so that every process is reaped).
    """

    def __init__(self, popen, name: str, cores: int, clients: int, ops: int, mix: dict,
                 simulate: bool = False, faulted_core: int | None = None, seed: int = 0):
        self.procs = [popen(*client_args(name, ops, cores, mix, seed + i, simulate,
                                        faulted_core)) for i in range(clients)]
        self.done = [0] * clients
        self.results: list[dict | None] = [None] * clients
        self.stderr = [""] * clients
        self._readers = [threading.Thread(target=self._read, args=(i,), daemon=True)
                         for i in range(clients)]
        for t in self._readers:
            t.start()

    def _read(self, i: int) -> None:
        proc = self.procs[i]
        for line in proc.stdout:
            msg = json.loads(line)
            if "progress" in msg:
                self.done[i] = msg["progress"]
            else:
                self.results[i] = msg
        self.stderr[i] = proc.stderr.read().decode(errors="replace") if proc.stderr else ""

    @property
    def progress(self) -> int:
        return sum(self.done)

    def wait_progress(self, n: int, timeout: float = 60.0, on_progress=None) -> None:
        """Until the clients together have done ``n`` operations."""
        deadline = time.monotonic() + timeout
        while self.progress < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"storm clients did {self.progress} of {n} operations "
                                   f"in {timeout} s; stderr: {self.stderr}")
            if all(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"storm clients ended after {self.progress} of {n} "
                                   f"operations; stderr: {self.stderr}")
            if on_progress:
                on_progress(self.progress)
            time.sleep(0.01)

    def wait(self, timeout: float = ANSWER_TIMEOUT * 4, on_progress=None) -> list[dict | None]:
        """Every client's report (None for one that was killed); each must
        have exited 0 unless it was killed."""
        deadline = time.monotonic() + timeout
        for t, p in zip(self._readers, self.procs):
            while t.is_alive() and time.monotonic() < deadline:
                t.join(0.05)
                if on_progress:
                    on_progress(self.progress)
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        for i, p in enumerate(self.procs):
            if p.returncode != 0 and p.returncode != -signal.SIGKILL:
                raise RuntimeError(f"storm client {i} exited {p.returncode}: {self.stderr[i]}")
        return self.results


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def storm(cores: int, clients: int, ops: int, mix: dict, progress=None,
          simulate: bool = False, warmup: float = 0.1) -> dict:
    """A storm on a runtime of its own; the summary (see ``summarize``)."""
    from procmgr.client.runtime import Runtime

    name = f"procmgr-storm-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    rt = Runtime(cores=cores, name=name, simulate=simulate).start()
    manager_pid = rt.proc.pid
    memory = {"start": rss(manager_pid)}
    start = time.perf_counter()
    run = None
    try:
        run = Clients(_popen, name, cores, clients, ops, mix, simulate)
        run.wait_progress(int(warmup * clients * ops), timeout=ANSWER_TIMEOUT * 4 + ops,
                          on_progress=progress)
        memory["warm"] = rss(manager_pid)
        results = run.wait(timeout=ANSWER_TIMEOUT * 4 + ops, on_progress=progress)
        wall = time.perf_counter() - start
        memory["end"] = rss(manager_pid)
        manager = settled_stats(rt.monitor)
    finally:
        for p in run.procs if run else ():
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
        rt.close()
    return summarize(results, wall, manager_pid, name, memory, manager)


def settled_stats(monitor, timeout: float = 5.0) -> dict:
    """The manager's counters once the last domain is cleaned up (cleanup
    replies may still be on their way when the clients are done)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = monitor.stats(timeout=ANSWER_TIMEOUT)
        if stats["domains"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def leftovers(name: str, manager_pid: int) -> dict:
    """What a runtime that is gone may not leave: zombie children of ours,
    processes that carry its name, its segments."""
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
    return {"zombies": zombies, "orphans": orphans, "leaked_segments": leaked}


def summarize(results: list[dict | None], wall: float, manager_pid: int, name: str,
              memory: dict | None = None, manager: dict | None = None) -> dict:
    stats, errors, fault_errors, lat = Counter(), Counter(), Counter(), Counter()
    for r in results:
        if r is None:
            continue
        stats.update(r["stats"])
        errors.update(r["errors"])
        fault_errors.update(r["fault_errors"])
        lat.update({int(k): v for k, v in r["latency"].items()})
    answered = stats["answered"]
    summary = {
        "ops": stats["sent"], "answered": answered, "ops_per_s": round(answered / wall, 1),
        "latency_ms_p50": percentile(lat, 0.50), "latency_ms_p99": percentile(lat, 0.99),
        "errors": dict(errors), "fault_errors": dict(fault_errors),
        "faulted": stats["faulted"], "manager_gone": stats["manager_gone"],
        "lost": stats["lost"], "duplicated": stats["duplicates"],
        "wrong_status": stats["wrong_status"], "statuses_checked": stats["checked"],
        **leftovers(name, manager_pid), "seconds": round(wall, 2),
    }
    if memory:
        summary["manager_rss_kb"] = {k: v // 1024 for k, v in memory.items()}
    if manager:
        # The manager's count includes nothing of the monitor's so far: the
        # stats request itself is answered after the count is taken.
        summary["manager_answered"] = manager["answered"]
        summary["domains_left"] = manager["domains"]
        summary["manager_internal_errors"] = manager["internal_errors"]
    return summary


def percentile(hist: Counter, q: float) -> float | None:
    """The ``q`` quantile of a latency histogram, in ms (bucket floor)."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = int(q * total), 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen > rank:
            return round(bucket * LATENCY_BUCKET * 1e3, 3)
    return None


def healthy(summary: dict) -> bool:
    return not (summary["lost"] or summary["duplicated"] or summary["wrong_status"]
                or summary["zombies"] or summary["orphans"] or summary["leaked_segments"]
                or summary.get("domains_left") or summary.get("manager_internal_errors")
                or summary.get("manager_answered", summary["answered"]) != summary["answered"])


def main(argv: list[str] | None = None) -> int:
    """A storm client: NAME OPS CORES MIX_JSON SEED [--simulate] [--faulted-core K]."""
    ap = argparse.ArgumentParser(prog="python -m procmgr.storm")
    ap.add_argument("name")
    ap.add_argument("ops", type=int)
    ap.add_argument("cores", type=int)
    ap.add_argument("mix", type=json.loads)
    ap.add_argument("seed", type=int)
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--faulted-core", type=int)
    args = ap.parse_args(argv)
    result = client_main(args.name, args.ops, args.cores, args.mix, args.seed,
                         args.simulate, args.faulted_core)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
