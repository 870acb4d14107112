"""Defect 13: exit is an RPC that is never answered.

Barrelfish's exit (C and H) was a blocking call with no response: the
domain stayed blocked in it until spawnd revoked its dispatcher, and a
failed lookup was only logged.

Here the exit call is answered -- OK once the manager has taken the exit
status and started stopping the domain, an error otherwise -- and the
status is what wait and status report afterwards.
"""

from __future__ import annotations

import pytest

from procmgr.client.client import Domain
from procmgr.protocol import State
from procmgr.errors import Err
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, error_of, outcome, requests_for, settle,
)


@pytest.mark.parametrize("status", [0, 1, 3, 127, 255])
def test_exit_is_answered_and_sets_the_status(rt, client, other, status):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    waiter = other.wait_async(dom)
    assert client.exit(dom, status, timeout=TIMEOUT) is None
    assert other.wait_for(waiter, timeout=TIMEOUT) == status
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status, info.signaled) == (State.CLEANED, status, False)
    assert requests_for(rt.spawnds[0], dom.id, Op.SD_KILL) == 1
    assert_healthy(rt, client, other)


def test_exit_answered_before_the_dispatchers_are_gone(rt, client):
    """The caller is the domain itself: it is answered at once, not when
    its own dispatchers have been stopped (that would be never)."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    client.span(dom, 1, timeout=TIMEOUT)
    for sd in rt.spawnds.values():
        sd.hold = True
    fut = client.exit_async(dom, 2)
    settle(rt, client)
    assert outcome(fut) is None
    assert client.status(dom, timeout=TIMEOUT).state == State.STOP_PEND
    for sd in rt.spawnds.values():
        sd.hold = False
        sd.release()
    assert client.wait(dom, timeout=TIMEOUT) == 2
    assert_healthy(rt, client)


def test_exit_with_a_bad_cap_is_answered(rt, client):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    assert error_of(client.exit, Domain(dom.id + 1, dom.nonce), 0) == Err.DOMAIN_TABLE_FIND
    assert error_of(client.exit, Domain(dom.id, dom.nonce + 1), 0) == Err.BAD_CAP
    assert client.status(dom, timeout=TIMEOUT).state == State.RUNNING
    assert_healthy(rt, client)


def test_second_exit_is_refused_and_keeps_the_first_status(rt, client):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    client.exit(dom, 4, timeout=TIMEOUT)
    assert error_of(client.exit, dom, 5) == Err.DOMAIN_NOT_RUNNING
    assert client.wait(dom, timeout=TIMEOUT) == 4
    assert_healthy(rt, client)
