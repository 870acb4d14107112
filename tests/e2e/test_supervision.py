"""Supervised programs with real processes: restart policies, backoff,
intensity, stop/start/restart, and what a kill means
(procmgr/manager/supervisor.py)."""

from __future__ import annotations

import os
import signal
import statistics
import time

import pytest

from e2e_helpers import T, pm, process_gone, rt, wait_until  # noqa: F401 (fixtures)
from procmgr import Err, ProcMgmtError

CRASH = ["/bin/sh", "-c", "exit 3"]


def gaps(info) -> list[float]:
    """Seconds from each incarnation's end to the next one's start."""
    h = info.history
    return [b["started"] - a["ended"] for a, b in zip(h, h[1:])]


def test_a_crashing_program_is_restarted_then_given_up(pm):
    """on-failure, four restarts allowed: five incarnations, each a domain
    of its own that ended 3, then FATAL; the waiter is answered then."""
    info = pm.supervise(CRASH, name="crasher", backoff=0.01, max_restarts=4, period=60,
                        timeout=T)
    assert info.name == "crasher" and info.state in ("STARTING", "RUNNING")
    final = pm.wait_program("crasher", timeout=T)
    assert final.state == "FATAL" and final.restarts == 4
    assert len(final.history) == 5
    assert [h["status"] for h in final.history] == [3] * 5
    assert len({h["domain"] for h in final.history}) == 5
    assert final.last_exit["status"] == 3 and not final.last_exit["killed"]
    assert final.pid == 0 and all(process_gone(h["pid"]) for h in final.history)


@pytest.mark.parametrize("restart, code, ends_as", [
    ("on-failure", 0, "EXITED"), ("no", 3, "EXITED"), ("always", 0, "FATAL"),
])
def test_the_policy_says_which_ends_restart(pm, restart, code, ends_as):
    pm.supervise(["/bin/sh", "-c", f"exit {code}"], name="p", restart=restart, backoff=0,
                 max_restarts=2, timeout=T)
    final = pm.wait_program("p", timeout=T)
    assert final.state == ends_as
    assert final.restarts == (2 if ends_as == "FATAL" else 0)


def test_a_kill_of_the_incarnation_stops_the_program_for_good(pm):
    info = pm.supervise(["/bin/sleep", "30"], name="server", restart="always", timeout=T)
    wait_until(lambda: pm.program("server", timeout=T).state == "RUNNING")
    info = pm.program("server", timeout=T)
    pm.kill(info.domain, timeout=T)
    final = pm.wait_program("server", timeout=T)
    assert final.state == "STOPPED" and final.restarts == 0
    assert final.last_exit["killed"] and process_gone(info.pid)


def test_a_death_by_signal_is_a_failure_and_restarts(pm):
    pm.supervise(["/bin/sleep", "30"], name="victim", timeout=T)
    wait_until(lambda: pm.program("victim", timeout=T).pid)
    first = pm.program("victim", timeout=T).pid
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: pm.program("victim", timeout=T).pid not in (0, first))
    info = pm.program("victim", timeout=T)
    assert info.state == "RUNNING" and info.restarts == 1
    assert info.last_exit == {**info.last_exit, "status": 9, "signaled": True, "killed": False}
    pm.stop_program("victim", timeout=T)


def test_stop_start_and_restart(pm):
    pm.supervise(["/bin/sleep", "30"], name="svc", timeout=T)
    wait_until(lambda: pm.program("svc", timeout=T).pid)
    pid = pm.program("svc", timeout=T).pid
    stopped = pm.stop_program("svc", timeout=T)
    assert stopped.state == "STOPPED" and stopped.pid == 0
    assert process_gone(pid)
    assert pm.stop_program("svc", timeout=T).state == "STOPPED"       # again: nothing to do
    pm.start_program("svc", timeout=T)
    wait_until(lambda: pm.program("svc", timeout=T).pid)
    second = pm.program("svc", timeout=T).pid
    pm.restart_program("svc", timeout=T)
    wait_until(lambda: pm.program("svc", timeout=T).pid not in (0, second))
    assert process_gone(second)
    assert [p["name"] for p in pm.programs(timeout=T)] == ["svc"]
    assert pm.remove_program("svc", timeout=T).state == "STOPPED"
    assert pm.programs(timeout=T) == []


def test_the_backoff_grows_and_is_capped(pm):
    """No jitter: the delays are 0.1, 0.2, 0.3 (capped), 0.3 s."""
    pm.supervise(CRASH, name="slow", backoff=0.1, backoff_factor=2, backoff_max=0.3,
                 jitter=0, max_restarts=4, timeout=T)
    final = pm.wait_program("slow", timeout=T)
    assert final.state == "FATAL"
    for got, want in zip(gaps(final), [0.1, 0.2, 0.3, 0.3]):
        assert want - 0.01 <= got <= want + 0.15, gaps(final)


def test_a_program_that_cannot_start_is_given_up_in_words(pm):
    pm.supervise(["/nonexistent/prog"], name="missing", backoff=0, max_restarts=2,
                 timeout=T)
    final = pm.wait_program("missing", timeout=T)
    assert final.state == "FATAL" and final.restarts == 2
    assert "EXEC_FAILED" in final.error and "/nonexistent/prog" in final.error


def test_programs_live_on_after_the_client_that_asked(rt):
    with rt.client() as asker:
        asker.supervise(["/bin/sleep", "30"], name="kept", timeout=T)
    other = rt.client()
    wait_until(lambda: other.program("kept", timeout=T).state == "RUNNING")
    other.stop_program("kept", timeout=T)


def test_restart_without_delay_is_quick(pm):
    """Zero backoff: from an incarnation's end (as the supervisor learns
    it) to the next one running. The bench (bench/supervise.py) measures
    it against the crash itself."""
    pm.supervise(["/bin/true"], name="quick", restart="always", backoff=0,
                 max_restarts=None, timeout=T)
    wait_until(lambda: pm.program("quick", timeout=T).restarts >= 9)
    info = pm.stop_program("quick", timeout=T)
    assert statistics.median(gaps(info)) < 0.05, gaps(info)


@pytest.mark.parametrize("options, words", [
    (dict(name=""), "a program's name is"),
    (dict(name="a/b"), "a program's name is"),
    (dict(name="a*"), "a program's name is"),
    (dict(name="x", restart="sometimes"), "restart must be one of"),
    (dict(name="x", backoff=-1), "backoff must be a number"),
    (dict(name="x", backoff_factor=0.5), "backoff_factor must be"),
    (dict(name="x", max_restarts=1.5), "max_restarts must be"),
    (dict(name="x", jitter=2), "jitter is a fraction"),
])
def test_bad_programs_are_refused_before_anything_is_sent(pm, options, words):
    with pytest.raises(ValueError, match=words):
        pm.supervise(["/bin/true"], **options)
    assert pm.programs(timeout=T) == []


def test_what_the_manager_refuses(pm):
    pm.supervise(["/bin/sleep", "30"], name="one", timeout=T)
    with pytest.raises(ProcMgmtError) as e:
        pm.supervise(["/bin/true"], name="one", timeout=T)
    assert e.value.code == Err.PROGRAM_EXISTS
    with pytest.raises(ProcMgmtError) as e:
        pm.program("two", timeout=T)
    assert e.value.code == Err.NO_SUCH_PROGRAM and "'two'" in str(e.value)
    with pytest.raises(ProcMgmtError) as e:
        pm.supervise(["/bin/true"], name="far", core=7, timeout=T)
    assert e.value.code == Err.INVALID_SPAWND and "cores [0, 1]" in str(e.value)
    pm.stop_program("one", timeout=T)


def test_a_program_whose_worker_died_neither_spins_nor_holds_up_others(rt):
    """No delay, no intensity: its worker SIGKILLed, every restart is
    refused at once (no worker on its core). Those are tried again only
    every half second, and another client is served meanwhile; with a
    new worker the program runs again."""
    from e2e_helpers import workers_of

    pm = rt.client()
    pm.supervise(["/bin/sleep", "30"], name="orphan", backoff=0, backoff_factor=1,
                 max_restarts=None, timeout=T)
    wait_until(lambda: pm.program("orphan", timeout=T).state == "RUNNING")
    worker = next(p for p in workers_of(rt.proc.pid).values() if "--core 0" in
                  " ".join(p.cmdline()))
    worker.kill()
    time.sleep(1.2)
    t = time.perf_counter()
    assert pm.wait(pm.spawn(["/bin/true"], core=1, timeout=T), timeout=T) == 0
    assert time.perf_counter() - t < 0.5
    info = pm.program("orphan", timeout=T)
    assert info.restarts <= 5 and "INVALID_SPAWND" in (info.error or ""), info
    rt.restart_core(0)
    wait_until(lambda: pm.program("orphan", timeout=T).state == "RUNNING")
    pm.stop_program("orphan", timeout=T)


@pytest.mark.parametrize("max_restarts", [None, 20])
def test_crash_loops_beside_another_client_add_up_and_leave_nothing(max_restarts):
    """Ten programs crash-looping with no backoff for two seconds, beside
    another client spawning: it is served all along; every domain the
    loops made is one restart counted (or the first start); nothing is
    left running once they are stopped. (bench/supervise.py runs this at
    100 programs for 30 s, for figures.)"""
    from bench.supervise import crash_loops

    r = crash_loops(programs=10, seconds=2.0, max_restarts=max_restarts)
    assert r["adds_up"], r
    assert r["children_left"] == 0
    assert r["busy_p50_ms"] < 1000
    if max_restarts is None:
        assert r["states"] == ["STOPPED"] and r["restarts"] > 100
    else:
        assert r["states"] == ["FATAL"] and r["restarts"] == 10 * max_restarts
