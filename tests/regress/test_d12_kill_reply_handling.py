"""Defect 12: kill reply handling.

Barrelfish answered only the killer whose reply finished the kill, threw
earlier errors away, and moved the domain to STOPPED even when that final
reply was an error.

Here, once every kill request in flight has been answered, a failure on
any core answers every killer with that error (and its errno); the domain
is not STOPPED while a core may still run it, waiters keep waiting, and a
later kill tries again -- only on the cores that still run it -- and can
succeed.
"""

from __future__ import annotations

import errno

import pytest

from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, outcome, requests_for, settle, state_of,
)


def test_failed_kill_answers_every_killer(rt, client, other):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    sd.hold = True
    sd.fail(Op.SD_KILL, Err.KILL_FAILED, errno.EPERM)
    kills = [client.kill_async(dom), other.kill_async(dom), client.kill_async(dom)]
    waiter = other.wait_async(dom)
    settle(rt, client, other)
    assert not any(f.done() for f in kills)
    sd.hold = False
    sd.release()
    settle(rt, client, other)
    for f in kills:
        try:
            f.result()
        except ProcMgmtError as e:
            assert (e.code, e.status) == (Err.KILL_FAILED, errno.EPERM)
        else:
            raise AssertionError("a killer was answered OK after the kill failed")
    assert not waiter.done(), "a waiter was answered although the domain runs on"
    info = client.status(dom, timeout=TIMEOUT)
    assert info.state not in (State.STOPPED, State.CLEANED)
    assert requests_for(sd, dom.id, Op.SD_CLEANUP) == 0
    # Killed again, for real this time.
    client.kill(dom, timeout=TIMEOUT)
    assert requests_for(sd, dom.id, Op.SD_KILL) == 2
    assert other.wait_for(waiter, timeout=TIMEOUT) == 9
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status) == (State.CLEANED, 9)
    assert_healthy(rt, client, other)


@pytest.mark.parametrize("error_first", [True, False], ids=["error-first", "error-last"])
def test_failure_on_one_core_of_two(rt, client, other, error_first):
    """Core 1 fails, core 0 succeeds: the killers get the error once both
    have answered, whichever came last; the retry goes to core 1 only."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    client.span(dom, 1, timeout=TIMEOUT)
    sd0, sd1 = rt.spawnds[0], rt.spawnds[1]
    sd0.hold = sd1.hold = True
    sd1.fail(Op.SD_KILL, Err.KILL_FAILED, errno.EBUSY)
    kills = [client.kill_async(dom), other.kill_async(dom)]
    settle(rt, client, other)
    first, last = (sd1, sd0) if error_first else (sd0, sd1)
    first.release()
    settle(rt, client, other)
    assert not any(f.done() for f in kills), "answered before every core replied"
    last.release()
    settle(rt, client, other)
    assert [outcome(f) for f in kills] == [Err.KILL_FAILED] * 2
    # Still running on core 1: not stopped, so RUNNING again (no exit status).
    info = client.status(dom, timeout=TIMEOUT)
    assert info.state == State.RUNNING and info.exit_status is None
    sd0.hold = sd1.hold = False
    other.kill(dom, timeout=TIMEOUT)
    assert requests_for(sd0, dom.id, Op.SD_KILL) == 1
    assert requests_for(sd1, dom.id, Op.SD_KILL) == 2
    assert client.wait(dom, timeout=TIMEOUT) == 9
    for sd in (sd0, sd1):
        assert requests_for(sd, dom.id, Op.SD_CLEANUP) == 1
    assert state_of(client, dom) == State.CLEANED
    assert_healthy(rt, client, other)


def test_failed_kill_then_dispatcher_exits(rt, client):
    """After a failed kill the dispatcher ends by itself: the domain stops
    and its waiter is answered, without another kill."""
    dom = client.spawn(["a"], core=1, timeout=TIMEOUT)
    sd = rt.spawnds[1]
    sd.fail(Op.SD_KILL, Err.KILL_FAILED, errno.EPERM)
    waiter = client.wait_async(dom)
    fut = client.kill_async(dom)
    settle(rt, client)
    assert outcome(fut) == Err.KILL_FAILED
    assert not waiter.done()
    sd.exit(dom.id, 0)
    settle(rt, client)
    assert waiter.done()
    assert outcome(waiter) == client.status(dom, timeout=TIMEOUT).exit_status
    assert state_of(client, dom) == State.CLEANED
    assert requests_for(sd, dom.id, Op.SD_KILL) == 1
    assert_healthy(rt, client, core=1)


@pytest.mark.parametrize("how", ["reported", "exit-call"])
def test_exit_after_failed_kill_reports_its_own_status(rt, client, how):
    """The kill failed, so the domain was not killed: when it later exits
    with 3 (reported by its spawnd, or by its own exit call), wait says 3."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    sd.fail(Op.SD_KILL, Err.KILL_FAILED, errno.EPERM)
    fut = client.kill_async(dom)
    settle(rt, client)
    assert outcome(fut) == Err.KILL_FAILED
    if how == "reported":
        sd.exit(dom.id, 3)
        settle(rt, client)
    else:
        client.exit(dom, 3, timeout=TIMEOUT)
    assert client.wait(dom, timeout=TIMEOUT) == 3
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.exit_status, info.signaled) == (3, False)
    assert_healthy(rt, client)
