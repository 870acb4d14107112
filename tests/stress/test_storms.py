"""Storms: spawn/kill/exit/wait/span from several client processes at once,
every answer checked against an outcome known in advance (procmgr/storm.py).

After every run: each request answered exactly once (no lost answer, no
duplicate, and the manager's own count of answers equal to the clients'
count of requests), each exit status right, no error, no domain left in the
table, no zombie, no orphan, no leaked segment, no socket. The soaks (marked
``slow``, run by ``make soak``) also check that the manager's memory does not
grow once warmed up. ``PROCMGR_SOAK_SCALE`` scales the soaks down (0.01: a
hundredth) to try them quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from procmgr import storm
from procmgr import State
from storm_support import T, close_and_check, gone, wait_until

pytestmark = pytest.mark.usefixtures("no_zombie_children")

SOAK_SCALE = float(os.environ.get("PROCMGR_SOAK_SCALE", "1"))
# The manager's RSS may vary this much between the end of the warm-up and the
# end of a soak (allocator noise, the history of cleaned domains filling up);
# a leak of even 100 bytes per operation would be far above it.
RSS_SLACK_KB = 4096


def run_storm(children, rt, clients: int, ops: int, mix=None, warmup: float = 0.1,
              **kw) -> dict:
    """A storm against ``rt`` from ``clients`` processes; the runtime is then
    closed and the summary (leftovers included) returned and printed."""
    mix = mix or storm.DEFAULT_MIX
    manager_pid = rt.proc.pid
    memory = {"start": storm.rss(manager_pid)}
    start = time.perf_counter()
    run = storm.Clients(children.python, rt.name, rt.cores, clients, ops, mix,
                        simulate=rt.simulate, **kw)
    run.wait_progress(int(warmup * clients * ops), timeout=60 + ops)
    memory["warm"] = storm.rss(manager_pid)
    results = run.wait(timeout=60 + ops)
    wall = time.perf_counter() - start
    memory["end"] = storm.rss(manager_pid)
    manager = storm.settled_stats(rt.monitor)
    close_and_check(rt)
    summary = storm.summarize(results, wall, manager_pid, rt.name, memory, manager)
    print(json.dumps(summary))
    return summary


def assert_clean(s: dict) -> None:
    """Everything a storm without faults must show."""
    assert s["lost"] == 0 and s["duplicated"] == 0, s
    assert s["wrong_status"] == 0, s
    assert s["errors"] == {} and s["fault_errors"] == {} and s["manager_gone"] == 0, s
    assert s["manager_answered"] == s["answered"] == s["ops"], s
    assert s["domains_left"] == 0 and s["manager_internal_errors"] == 0, s
    assert s["zombies"] == s["orphans"] == s["leaked_segments"] == [], s
    assert storm.healthy(s)


@pytest.mark.parametrize("pending", ["replyq", "hashtable"])
def test_storm_of_real_programs(children, make_runtime, pending):
    s = run_storm(children, make_runtime(cores=2, pending=pending), clients=3, ops=120)
    assert_clean(s)
    assert s["ops"] >= 3 * 120 and s["statuses_checked"] > 3 * 30


def test_storm_of_simulated_dispatchers(children, make_runtime):
    s = run_storm(children, make_runtime(cores=2, simulate=True), clients=3, ops=1500)
    assert_clean(s)
    assert s["statuses_checked"] > 3 * 300


def test_storm_of_one_op_kind_at_a_time(children, make_runtime):
    """Mixes with one kind of request dominating: spawn only (every domain
    is then waited for at the end), span-heavy, exit-heavy."""
    rt = make_runtime(cores=2)
    run = storm.Clients(children.python, rt.name, 2, 3, 60, {"spawn": 1}, seed=10)
    assert all(r["stats"]["checked"] > 0 for r in run.wait(timeout=60))
    for mix in ({"spawn": 1, "span": 3, "kill": 1}, {"spawn": 1, "exit": 2, "wait": 1}):
        run = storm.Clients(children.python, rt.name, 2, 2, 60, mix, seed=20)
        for r in run.wait(timeout=60):
            assert r["errors"] == {} and r["stats"].get("wrong_status", 0) == 0, r
            assert r["stats"]["sent"] == r["stats"]["answered"], r
    assert storm.settled_stats(rt.monitor)["domains"] == 0


def test_the_checks_catch_a_wrong_status(make_runtime):
    """The storm's bookkeeping is not vacuous: a domain killed behind the
    manager's back (SIGKILL, not a kill request) waits to -9, not the 9 or
    K the client expected, and is counted as a wrong status."""
    rt = make_runtime(cores=2)
    pm = rt.client()
    client = storm.StormClient(pm, 2, {"spawn": 1}, seed=1)
    while len(client.running) < 2:
        client.spawn()
    victim = client.running[0]
    os.kill(victim.pid, 9)
    wait_until(lambda: pm.status(victim, timeout=T).state != State.RUNNING,
               "the manager has seen the domain die")
    client.finish()
    r = client.report()
    assert r["stats"]["wrong_status"] == 1, r
    assert r["errors"] == {"DOMAIN_NOT_RUNNING": 1}, r    # the client's kill came too late
    assert gone(victim.pid)


def test_cli_storm_with_simulated_dispatchers():
    proc = subprocess.run([sys.executable, "-m", "procmgr", "storm", "--cores", "2",
                           "--clients", "2", "--ops", "500", "--simulate", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["ops"] == s["answered"] == s["manager_answered"] >= 1000
    assert s["errors"] == {} and s["lost"] == s["duplicated"] == s["wrong_status"] == 0
    assert set(s["manager_rss_kb"]) == {"start", "warm", "end"}


# ---- soaks -----------------------------------------------------------------------


def soak(children, rt, total_ops: int, clients: int) -> dict:
    ops = max(50, int(total_ops * SOAK_SCALE) // clients)
    s = run_storm(children, rt, clients=clients, ops=ops, warmup=0.2)
    assert_clean(s)
    assert s["ops"] >= clients * ops
    growth = s["manager_rss_kb"]["end"] - s["manager_rss_kb"]["warm"]
    assert growth < RSS_SLACK_KB, f"manager grew {growth} KiB over the soak: {s}"
    return s


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_real_programs(children, make_runtime):
    """At least 100,000 operations on real programs, 3 client processes."""
    soak(children, make_runtime(cores=2), 100_000, clients=3)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_simulated_dispatchers(children, make_runtime):
    """At least 1,000,000 operations with simulated dispatchers."""
    soak(children, make_runtime(cores=2, simulate=True), 1_000_000, clients=3)
