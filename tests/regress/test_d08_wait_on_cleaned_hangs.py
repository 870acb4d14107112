"""Defect 8: wait on a CLEANED domain hangs forever.

Barrelfish counted only STOPPED as finished, so a wait that arrived after
cleanup was queued and never answered; H's ``nohang`` also overwrote the
stored exit status with 255.

Here a wait on a STOPPED or CLEANED domain is answered at once with the
recorded exit status; ``nohang`` on a domain still running answers "still
running" (None) and changes nothing.
"""

from __future__ import annotations

import errno

import pytest

from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, child_cap, outcome, settle, state_of,
)


def test_wait_on_cleaned_domain_answers_at_once(rt, client, other):
    killed = client.spawn(["k"], core=0, timeout=TIMEOUT)
    exited = client.spawn(["e"], core=1, timeout=TIMEOUT)
    client.kill(killed, timeout=TIMEOUT)
    client.exit(exited, 3, timeout=TIMEOUT)
    settle(rt, client)
    assert state_of(client, killed) == state_of(client, exited) == State.CLEANED
    futs = [other.wait_async(killed), other.wait_async(exited),
            other.wait_async(killed, nohang=True), other.wait_async(exited, nohang=True)]
    settle(rt, other)
    assert [outcome(f) for f in futs] == [9, 3, 9, 3]
    assert_healthy(rt, client, other)


def test_wait_on_stopped_not_yet_cleaned(rt, client):
    """The cleanup reply is held back: the domain is STOPPED, and a wait is
    answered at once; so is it after the cleanup."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    sd.hold = True
    kill = client.kill_async(dom)
    settle(rt, client)
    sd.release()                       # the kill reply; the cleanup is sent
    settle(rt, client)
    assert outcome(kill) is None
    assert [m.op for m in sd.log][-2:] == [Op.SD_KILL, Op.SD_CLEANUP]
    assert state_of(client, dom) == State.STOPPED
    early = client.wait_async(dom)
    settle(rt, client)
    assert outcome(early) == 9
    sd.hold = False
    sd.release()
    settle(rt, client)
    assert state_of(client, dom) == State.CLEANED
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert_healthy(rt, client)


def test_nohang_does_not_overwrite_the_exit_status(rt, client):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    for _ in range(3):
        assert client.wait(dom, nohang=True, timeout=TIMEOUT) is None
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status) == (State.RUNNING, None)
    waiter = client.wait_async(dom)
    client.exit(dom, 5, timeout=TIMEOUT)
    assert client.wait_for(waiter, timeout=TIMEOUT) == 5
    assert client.wait(dom, nohang=True, timeout=TIMEOUT) == 5
    assert client.wait(dom, timeout=TIMEOUT) == 5
    assert client.status(dom, timeout=TIMEOUT).exit_status == 5
    assert_healthy(rt, client)


def test_nohang_while_stopping(rt, client):
    """STOP_PEND is not finished: nohang says still running, a plain wait
    waits, and both leave the status the kill set."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    sd.hold = True
    kill = client.kill_async(dom)
    settle(rt, client)
    assert state_of(client, dom) == State.STOP_PEND
    assert client.wait(dom, nohang=True, timeout=TIMEOUT) is None
    waiter = client.wait_async(dom)
    settle(rt, client)
    assert not waiter.done()
    sd.hold = False
    sd.release()
    settle(rt, client)
    assert outcome(kill) is None and outcome(waiter) == 9
    assert client.status(dom, timeout=TIMEOUT).exit_status == 9
    assert_healthy(rt, client)


@pytest.mark.parametrize("nohang", [False, True], ids=["wait", "nohang"])
def test_wait_on_domain_whose_spawn_failed(rt, client, nohang):
    """The child's cap outlives its failed spawn (it had it before the
    reply): a later wait is answered at once, with the spawn's error, as the
    waiters that were already waiting were."""
    sd = rt.spawnds[0]
    sd.fail(Op.SD_SPAWN, Err.EXEC_FAILED, errno.ENOENT)
    with pytest.raises(ProcMgmtError):
        client.spawn(["bad"], core=0, timeout=TIMEOUT)
    cap = child_cap(sd)
    assert state_of(client, cap) == State.CLEANED
    with pytest.raises(ProcMgmtError) as info:
        client.wait(cap, nohang=nohang, timeout=TIMEOUT)
    assert info.value.code == Err.EXEC_FAILED
    assert_healthy(rt, client)
