"""Events with real processes (procmgr/client/events.py): what each end of
a domain says, a supervised program's life told event by event, the
async iteration, how soon an event arrives, and `procmgr events`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest

import procmgr
from e2e_helpers import T, pm, rt, wait_until  # noqa: F401 (fixtures)


def collect(pm, until, after=0, timeout=T) -> list:
    """Events from ``after`` on until ``until(events)`` holds."""
    got = []
    for event in pm.events(after=after, timeout=timeout):
        got.append(event)
        if until(got):
            return got
    raise AssertionError("unreachable: the iterator ends by TimeoutError")


def test_each_end_of_a_domain_is_told_with_its_status(pm):
    exited = pm.spawn(["/bin/sh", "-c", "exit 3"])
    pm.wait(exited, timeout=T)
    killed = pm.spawn(["/bin/sleep", "30"])
    pm.kill(killed, timeout=T)
    shot = pm.spawn(["/bin/sleep", "30"])
    os.kill(shot.pid, signal.SIGKILL)
    pm.wait(shot, timeout=T)
    with pytest.raises(procmgr.ProcMgmtError):
        pm.spawn(["/nonexistent/program"])
    events = collect(pm, lambda got: len(got) == 7)
    assert [e.seq for e in events] == list(range(1, 8))
    told = [(e.kind, e.domain, e.pid, e.returncode) for e in events]
    assert told[:6] == [
        ("spawned", exited.id, exited.pid, None), ("exited", exited.id, exited.pid, 3),
        ("spawned", killed.id, killed.pid, None), ("killed", killed.id, killed.pid, 9),
        ("spawned", shot.id, shot.pid, None), ("exited", shot.id, shot.pid, -9)]
    failed = events[6]
    assert failed.kind == "spawn_failed" and failed.pid is None
    assert "EXEC_FAILED" in failed.error and "ENOENT" in failed.error
    assert all(e.time <= f.time for e, f in zip(events, events[1:]))


def test_a_supervised_programs_life_is_told_and_its_restarts_add_up(pm):
    pm.supervise(["/bin/sh", "-c", "exit 1"], name="crashy", backoff=0, max_restarts=3,
                 period=60, timeout=T)
    final = pm.wait_program("crashy", timeout=T)
    assert final.state == "FATAL"
    events = collect(pm, lambda got: got[-1].kind == "given_up")
    mine = [e for e in events if e.program == "crashy"]
    assert [e.kind for e in mine] == \
        ["started"] + ["backoff", "restarted"] * 3 + ["given_up"]
    restarted = [e for e in mine if e.kind == "restarted"]
    assert [e.restarts for e in restarted] == [1, 2, 3] == list(range(1, final.restarts + 1))
    # Each incarnation is a domain: spawned, then exited 1, before its
    # program's next word about it.
    incarnations = [h["domain"] for h in final.history]
    for dom in incarnations:
        kinds = [e.kind for e in events if e.domain == dom and e.program is None]
        assert kinds == ["spawned", "exited"]
        assert [e.returncode for e in events if e.domain == dom and e.kind == "exited"] == [1]
    pm.remove_program("crashy", timeout=T)
    assert collect(pm, lambda got: True, after=events[-1].seq)[0].kind == "removed"


def test_stop_and_a_finished_program_are_told(pm):
    pm.supervise(["/bin/sleep", "30"], name="svc", restart="always", timeout=T)
    pm.supervise(["/bin/true"], name="once", restart="no", timeout=T)
    pm.wait_program("once", timeout=T)
    wait_until(lambda: pm.program("svc", timeout=T).state == "RUNNING")
    pm.stop_program("svc", timeout=T)
    events = collect(pm, lambda got: {("svc", "stopped"), ("once", "finished")} <=
                     {(e.program, e.kind) for e in got})
    svc = [e.kind for e in events if e.program == "svc"]
    assert svc == ["started", "stopped"]
    assert [e.kind for e in events if e.program == "once"] == ["started", "finished"]
    # The incarnation's end was the stop's kill.
    killed = [e for e in events if e.kind == "killed"]
    assert len(killed) == 1 and killed[0].returncode == 9


def test_an_event_reaches_a_waiting_consumer_at_once(rt):
    """A consumer waiting for the next event gets it within a few ms of
    the event (measured: ~0.25 ms median on 2 CPUs), not at its wait's end."""
    consumer, producer = rt.client(), rt.client()
    delays, ready = [], threading.Event()

    def consume():
        ready.set()
        for event in consumer.events(kinds="exited", timeout=T):
            delays.append(time.time() - event.time)
            if len(delays) == 20:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    ready.wait(T)
    time.sleep(0.2)                 # its request waits in the manager by now
    for _ in range(20):
        producer.wait(producer.spawn(["/bin/true"]), timeout=T)
        time.sleep(0.01)
    thread.join(T)
    assert len(delays) == 20
    assert statistics.median(delays) < 0.05, delays


def test_async_iteration(rt):
    async def main():
        apm = await procmgr.aconnect(rt.name)
        try:
            d = await apm.spawn(["/bin/sh", "-c", "exit 4"])
            await apm.wait(d, timeout=T)
            got = []
            async for event in apm.events(after=0, kinds=["exited"], timeout=T):
                got.append(event)
                break
            with pytest.raises(TimeoutError):
                async for event in apm.events(timeout=0.2):
                    pass
            return d, got
        finally:
            apm.close()

    d, got = asyncio.run(main())
    assert [(e.kind, e.domain, e.returncode) for e in got] == [("exited", d.id, 4)]


def test_procmgr_events_follows_as_json_lines(rt):
    d = rt.client().spawn(["/bin/sh", "-c", "exit 2"])
    rt.client().wait(d, timeout=T)
    cmd = [sys.executable, "-m", "procmgr", "events", "--name", rt.name]
    out = subprocess.run(cmd + ["--after", "0", "--count", "2", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(x["seq"], x["kind"], x["domain"]) for x in lines] == \
        [(1, "spawned", d.id), (2, "exited", d.id)]
    assert lines[1]["returncode"] == 2
    text = subprocess.run(cmd + ["--after", "1", "--count", "1"], capture_output=True,
                          text=True, timeout=60)
    assert text.returncode == 0 and "#2 exited" in text.stdout and "status=2" in text.stdout
    quiet = subprocess.run(cmd + ["--timeout", "0.2"], capture_output=True, text=True,
                           timeout=60)
    assert quiet.returncode == 1 and "no event within 0.2 s" in quiet.stderr
    bad = subprocess.run(cmd + ["--kind", "exited,nope"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "unknown event kind 'nope'" in bad.stderr


def test_a_restart_whose_spawn_fails_is_told_with_its_error(pm, tmp_path):
    """Each restart counted is a "restarted" event, the failed ones with
    their error and no domain."""
    script = tmp_path / "once.sh"
    script.write_text(f"#!/bin/sh\nrm -f {script}\nexit 1\n")
    script.chmod(0o755)
    pm.supervise([str(script)], name="once", backoff=0, max_restarts=3, timeout=T)
    final = pm.wait_program("once", timeout=T)
    assert final.state == "FATAL" and final.restarts == 3
    events = collect(pm, lambda got: got[-1].kind == "given_up")
    mine = [e for e in events if e.program == "once"]
    assert [e.kind for e in mine] == ["started"] + ["backoff", "restarted"] * 3 + ["given_up"]
    failed = [e for e in mine if e.kind == "restarted"]
    assert [e.restarts for e in failed] == [1, 2, 3]
    assert all(e.domain is None and "EXEC_FAILED" in e.error for e in failed)
    assert "EXEC_FAILED" in mine[-1].error


def test_the_timeout_counts_from_the_last_event_of_the_kinds_asked_for(rt):
    """Events of other kinds coming all the time do not keep a filtered
    iterator from timing out."""
    pm, busy = rt.client(), rt.client()
    stop, sleepers = threading.Event(), []

    def spawn_sleepers():
        while not stop.is_set():
            sleepers.append(busy.spawn(["/bin/sleep", "30"]))
            time.sleep(0.05)

    thread = threading.Thread(target=spawn_sleepers)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            for _ in pm.events(kinds="exited", timeout=0.5):
                pass
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        thread.join(T)
        for d in sleepers:
            busy.kill(d, timeout=T)
    assert len(sleepers) >= 5
