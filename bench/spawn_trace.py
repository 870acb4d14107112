"""Where one spawn + wait spends its time: `python -m bench.spawn_trace`.

Records the scheduler (`perf sched record`, system-wide: it needs perf and
the right to trace, e.g. root or kernel.perf_event_paranoid <= 0) while a
client spawns and waits for /bin/true one at a time, then follows each
program's exit to the next program's fork through the processes that pass
it on -- worker, manager, client, manager, worker -- and prints the median
of each step. The same for raw os.posix_spawn + waitpid, and the program's
own life (fork to exit) under both. This is the table in the README's
"Spawn" section.

A step is the time between two milestones, each the first of its kind after
the one before: a wake-up (`sched_waking`, by whom of whom) or a process
getting a CPU (`sched_switch` to it). An exit whose chain is missing a
milestone -- the next spawn's request found the manager awake, say -- is
left out of the step medians, not of the totals; the table says how many
exits each median covers.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import procmgr
from bench.spawn import raw_rate, runtime_rate

# (label, kind, who, of whom): "wake" is `who` waking `whom`, "run" is `who`
# switched in. Roles: worker, manager, client.
CHAIN = (
    ("the worker reaps the exit and wakes the manager", "wake", "worker", "manager"),
    ("the manager wakes up", "run", "manager", None),
    ("the manager answers the client's wait and wakes it", "wake", "manager", "client"),
    ("the client wakes up", "run", "client", None),
    ("the client sends the next spawn, waking the manager", "wake", "client", "manager"),
    ("the manager wakes up", "run", "manager", None),
    ("the manager forwards the spawn and wakes the worker", "wake", "manager", "worker"),
    ("the worker wakes up", "run", "worker", None),
    ("the worker: request in, fork", "fork", "worker", None),
)

_LINE = re.compile(r"\s*\S+\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+(?:sched:)?(\w+):\s*(.*)")


def parse(text: str) -> list[tuple[float, int, str, str]]:
    """`perf sched script` lines as (time µs, pid, event, the rest)."""
    events = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            events.append((float(m.group(2)) * 1e6, int(m.group(1)), m.group(3), m.group(4)))
    return events


def _field(rest: str, name: str) -> str:
    m = re.search(rf"\b{name}=(\S+)", rest)
    return m.group(1) if m else ""


def steps(events, roles: dict[int, str]) -> dict:
    """Follow every program exit to the next fork. ``roles``: pid -> role.

    Returns {"steps": [[µs, ...] per CHAIN step], "exit_to_fork": [µs],
    "life": [µs, fork to exit of each program]}."""
    per_step = [[] for _ in CHAIN]
    exit_to_fork, life = [], []
    forked: dict[int, float] = {}      # program pid -> fork time
    chain = None                       # (exit time, milestone times so far)
    for t, pid, event, rest in events:
        if event == "sched_process_fork":
            child = int(_field(rest, "child_pid") or 0)
            forked[child] = t
            if chain is not None:
                exit_t, times = chain
                exit_to_fork.append(t - exit_t)
                if len(times) == len(CHAIN) - 1:
                    times.append(t)
                    for i, (a, b) in enumerate(zip([exit_t] + times, times)):
                        per_step[i].append(b - a)
                chain = None
            continue
        if event == "sched_switch":
            prev, nxt = int(_field(rest, "prev_pid") or 0), int(_field(rest, "next_pid") or 0)
            if _field(rest, "prev_state").startswith("Z") and prev in forked:
                life.append(t - forked.pop(prev))
                chain = (t, [])
                continue
            happened = ("run", roles.get(nxt), None)
        elif event == "sched_waking":
            happened = ("wake", roles.get(pid), roles.get(int(_field(rest, "pid") or 0)))
        else:
            continue
        if chain is not None and len(chain[1]) < len(CHAIN) - 1:
            _, kind, who, whom = CHAIN[len(chain[1])]
            if happened == (kind, who, whom):
                chain[1].append(t)
    return {"steps": per_step, "exit_to_fork": exit_to_fork, "life": life}


def _record(run, seconds: float) -> str:
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "sched.data")
        perf = subprocess.Popen(["perf", "sched", "record", "-o", data, "--", "sleep",
                                 str(seconds)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)            # perf is recording
            run()
        finally:
            perf.wait(timeout=seconds + 30)
        return subprocess.run(["perf", "sched", "script", "-i", data], capture_output=True,
                              text=True, check=True).stdout


def measure(n: int = 600, cores: int = 2) -> dict:
    import psutil

    with procmgr.Runtime(cores=cores) as rt:
        pm = rt.client()
        runtime_rate(pm, 100, 1, cores)      # warm
        roles = {os.getpid(): "client", rt.proc.pid: "manager"}
        roles.update({p.pid: "worker" for p in psutil.Process(rt.proc.pid).children()})
        seconds = 1.0 + n / 500
        runtime = steps(parse(_record(lambda: runtime_rate(pm, n, 1, cores), seconds)), roles)
    raw = steps(parse(_record(lambda: raw_rate(n, 1), seconds)), {os.getpid(): "client"})
    return {"runtime": runtime, "raw": raw, "n": n}


def _median(values) -> str:
    return f"~{statistics.median(values):,.0f} µs" if values else "–"


def table(r: dict) -> str:
    rt, raw = r["runtime"], r["raw"]
    lines = ["| from a program's exit to the next program's `fork` | raw `posix_spawn` + "
             "`waitpid` | runtime |", "|---|---:|---:|"]
    for (label, *_), values in zip(CHAIN, rt["steps"]):
        lines.append(f"| {label} | | {_median(values)} |")
    lines.append(f"| **exit to next fork, all steps** | **{_median(raw['exit_to_fork'])}** | "
                 f"**{_median(rt['exit_to_fork'])}** |")
    lines.append(f"| the program itself, `fork` to exit | {_median(raw['life'])} | "
                 f"{_median(rt['life'])} |")
    covered = len(rt["steps"][0])
    lines.append(f"\nMedians over {len(rt['exit_to_fork'])} exits ({covered} passed every "
                 f"step in this order; the others, e.g. a request that found the manager "
                 f"awake, count in the totals only). Reproduce: "
                 f"`.venv/bin/python -m bench.spawn_trace` (needs perf).")
    return "\n".join(lines)


def main() -> int:
    if shutil.which("perf") is None:
        print("bench.spawn_trace needs perf (linux-perf)", file=sys.stderr)
        return 2
    print(table(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
