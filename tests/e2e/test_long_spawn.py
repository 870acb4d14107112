"""Spawns past the original interface's 2 KiB: an argv or env up to 1 MiB
each travels as a long message, in pieces through rings smaller than it
(procmgr/protocol/messages.py, "Long spawns"), and reaches the program
byte for byte; past the limit it is refused before anything is sent."""

from __future__ import annotations

import hashlib
import statistics
import sys
import threading
import time

import pytest

from e2e_helpers import T, pm, rt  # noqa: F401 (fixtures)
from procmgr import Err, ProcMgmtError
from procmgr.client import client as client_module
from procmgr.protocol import LONG_ARG_LIMIT, MAX_PAYLOAD

# The program: the sha256 of its arguments and of $BIG*, one per line.
DIGESTS = ("import hashlib, os, sys\n"
           "print(hashlib.sha256('\\0'.join(sys.argv[1:]).encode()).hexdigest())\n"
           "print(hashlib.sha256('\\0'.join(v for k, v in sorted(os.environ.items())"
           " if k.startswith('BIG')).encode()).hexdigest())\n")


def digest(items) -> str:
    return hashlib.sha256("\0".join(items).encode()).hexdigest()


def test_a_128_kib_argument_and_environment_reach_the_program(pm):
    """One argument as long as execve takes one (MAX_ARG_STRLEN, 128 KiB
    with its NUL), and an environment of 128 KiB: both longer than the
    256 KiB rings together, so they go in pieces on both hops."""
    arg = "a" * (128 * 1024 - 1)
    env = {f"BIG{i}": chr(ord("A") + i) * 32 * 1024 for i in range(4)}
    result = pm.run([sys.executable, "-c", DIGESTS, arg, "-", arg], env_extra=env, timeout=T)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [
        digest([arg, "-", arg]), digest(v for _, v in sorted(env.items()))]


def test_argv_up_to_its_limit_on_both_cores(pm):
    """An argv of a whole MiB (eight arguments of 128 KiB) runs on each
    core, and a span of it to the other core carries it too."""
    args = [str(i) * (128 * 1024 - 50) for i in range(8)]
    for core in (0, 1):
        result = pm.run([sys.executable, "-c", DIGESTS] + args, core=core, timeout=T)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().split()[0] == digest(args)
    d = pm.spawn(["/bin/sh", "-c", "sleep 30", "sh"] + args[:4], timeout=T)
    try:
        pid = pm.span(d, 1, timeout=T)
        assert pid > 0 and pm.status(d, timeout=T).cores == [0, 1]
    finally:
        pm.kill(d, timeout=T)


@pytest.mark.parametrize("field", ["argv", "env"])
def test_over_the_limit_is_refused_before_it_is_sent(pm, field):
    sent = pm.in_flight
    too_long = "x" * LONG_ARG_LIMIT
    with pytest.raises(ProcMgmtError) as e:
        if field == "argv":
            pm.spawn(["/bin/true", too_long], timeout=T)
        else:
            pm.spawn(["/bin/true"], env={"K": too_long}, timeout=T)
    size = LONG_ARG_LIMIT + (len("/bin/true\0") + 1 if field == "argv" else len("K=") + 1)
    assert e.value.code == Err.ARG_TOO_LONG
    assert f"{field} is {size} bytes, over the {LONG_ARG_LIMIT}-byte limit" in str(e.value)
    assert pm.in_flight == sent
    assert pm.run(["/bin/true"], timeout=T).returncode == 0      # the client is fine


def test_what_the_os_refuses_says_so(pm):
    """1 MiB in one argument is ours to carry but more than execve takes
    in one string: the program's start fails with E2BIG, in words."""
    with pytest.raises(ProcMgmtError, match="E2BIG") as e:
        pm.spawn(["/bin/true", "x" * (LONG_ARG_LIMIT - 100)], timeout=T)
    assert e.value.code == Err.EXEC_FAILED


def test_a_long_spawn_does_not_hold_up_another_clients_short_ones(rt):
    """While one client sends 1 MiB spawns back to back, another's spawn +
    wait of /bin/true is still served: its median stays within a few ms
    of what it is with nobody else (the manager copies at most a ring's
    worth of a long message per pass)."""
    quiet, loud = rt.client(), rt.client()
    args = ["/bin/true"] + ["b" * (100 * 1024)] * 10

    def short_rounds(n, until=lambda: True):
        times, deadline = [], time.monotonic() + T
        while len(times) < n or not until() and time.monotonic() < deadline:
            t = time.perf_counter()
            quiet.wait(quiet.spawn(["/bin/true"], core=1, timeout=T), timeout=T)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    alone = short_rounds(50)
    stop, longs = threading.Event(), []

    def flood():
        while not stop.is_set():
            loud.wait(loud.spawn(args, timeout=T), timeout=T)
            longs.append(1)

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        busy = short_rounds(50, until=lambda: len(longs) >= 5)
    finally:
        stop.set()
        thread.join(T)
    assert len(longs) >= 5, "the long spawns did not run alongside"
    print(f"alone {alone * 1e3:.2f} ms, beside long spawns {busy * 1e3:.2f} ms, {len(longs)} long")
    assert busy < alone + 0.02, (alone, busy)


@pytest.mark.parametrize("interrupts", [1, 2])
def test_a_long_send_cut_into_by_ctrl_c_is_finished_before_the_next(pm, monkeypatch,
                                                                     interrupts):
    """A Ctrl-C between two pieces of a long spawn reaches the caller at
    once; the rest of the message goes before the next request, which is
    answered as usual -- nothing half-sent garbles it. Twice (a Ctrl-C
    again while the rest goes): the request after that finishes it."""
    real, calls = client_module.send_long, []

    def interrupted(ring, data, start, wait):
        calls.append(ring.produced - start)
        if len(calls) == 1:
            ring.push_slots(memoryview(data)[:100 * 64])    # one piece, then Ctrl-C
        if len(calls) <= interrupts:
            raise KeyboardInterrupt
        real(ring, data, start, wait)

    monkeypatch.setattr(client_module, "send_long", interrupted)
    args = ["/bin/true"] + ["c" * (120 * 1024)] * 4
    with pytest.raises(KeyboardInterrupt):
        pm.spawn(args, timeout=T)
    for _ in range(interrupts - 1):
        with pytest.raises(KeyboardInterrupt):
            pm.run(["/bin/true"], timeout=T)
    assert pm.run(["/bin/sh", "-c", "exit 7"], timeout=T).returncode == 7
    assert calls == [0] + [100] * interrupts, "the send was not resumed where it was cut"
    monkeypatch.undo()
    assert pm.run(args, timeout=T).returncode == 0
    assert pm.unmatched_answers == 1          # the interrupted spawn's answer


def test_a_long_spawn_behind_answers_that_backed_up(rt):
    """A client whose answers wait in the manager (it sent three rings'
    worth of requests before reading) sends a long spawn: the manager reads
    none of its ring until the answers fit, so the sender takes them in
    while it waits for room. Another thread of the client meanwhile gets
    its answers, within its own timeouts."""
    pm = rt.client()
    d = pm.spawn(["/bin/sleep", "30"], timeout=T)
    try:
        backlog = [pm.wait_async(d, nohang=True) for _ in range(3 * 4096)]
        other = []

        def statuses():
            for _ in range(20):
                other.append(pm.status(d, timeout=T).state)

        thread = threading.Thread(target=statuses)
        thread.start()
        t = time.perf_counter()
        assert pm.run(["/bin/true"] + ["d" * (100 * 1024)] * 4, timeout=T).returncode == 0
        assert time.perf_counter() - t < 5
        thread.join(T)
        assert not thread.is_alive() and len(other) == 20
        assert all(f.result(T) is None for f in backlog)
    finally:
        pm.kill(d, timeout=T)


def test_a_runtime_that_predates_long_spawns_is_sent_none(pm):
    """Its handshake says nothing of them: past MAX_PAYLOAD, refused here,
    in words, rather than sent to a reader that would take its pieces for
    requests."""
    pm.long_limit = MAX_PAYLOAD
    with pytest.raises(ProcMgmtError) as e:
        pm.spawn(["/bin/true", "e" * 10_000], timeout=T)
    assert e.value.code == Err.ARG_TOO_LONG and "predates long spawns" in str(e.value)
    assert pm.run(["/bin/true", "e" * 1000], timeout=T).returncode == 0


def test_a_supervised_program_with_a_long_argv_restarts(pm):
    """The supervisor hands its spawns to the core without a ring: a long
    one goes as well as a short."""
    args = ["/bin/sh", "-c", "exit 2", "sh"] + ["f" * (100 * 1024)] * 4
    pm.supervise(args, name="long", backoff=0, max_restarts=2, timeout=T)
    final = pm.wait_program("long", timeout=T)
    assert final.state == "FATAL" and final.restarts == 2
    assert [h["status"] for h in final.history] == [2, 2, 2]
