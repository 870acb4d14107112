"""Defect 9: waiter list head not reset.

Barrelfish freed a domain's waiters at the STOPPED transition but left the
list head pointing at them, so later waits linked onto freed memory.

Here the waiters are answered once each, the list starts empty again, and
waits that come later -- on the same domain or on others -- are answered
exactly once, each with its own domain's status.
"""

from __future__ import annotations

from procmgr.protocol import State
from regress_helpers import (
    TIMEOUT, assert_healthy, outcome, settle, state_of,
)


def test_every_waiter_answered_once(rt, client, other):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    waiters = [c.wait_async(dom) for c in (client, other) for _ in range(4)]
    settle(rt, client, other)
    assert not any(f.done() for f in waiters)
    client.kill(dom, timeout=TIMEOUT)
    settle(rt, client, other)
    assert [outcome(f) for f in waiters] == [9] * 8
    # Later waits find an empty list and the stored status.
    later = [c.wait_async(dom) for c in (client, other) for _ in range(3)]
    settle(rt, client, other)
    assert [outcome(f) for f in later] == [9] * 6
    assert_healthy(rt, client, other)


def test_waiters_of_one_domain_are_not_answered_for_another(rt, client, other):
    doms = [client.spawn([f"d{i}"], core=i % 2, timeout=TIMEOUT) for i in range(4)]
    waits = {d.id: [client.wait_async(d), other.wait_async(d)] for d in doms}
    settle(rt, client, other)
    statuses = {}
    for i, d in enumerate(doms):
        # Stop them one at a time, alternating kill and exit.
        if i % 2:
            client.kill(d, timeout=TIMEOUT)
            statuses[d.id] = 9
        else:
            assert other.wait_for(other.exit_async(d, 20 + i), timeout=TIMEOUT) is None
            statuses[d.id] = 20 + i
        settle(rt, client, other)
        for e in doms:
            done = [f.done() for f in waits[e.id]]
            assert done == [e.id in statuses] * 2, f"waiters of {e.id} answered for {d.id}"
    for d in doms:
        assert [outcome(f) for f in waits[d.id]] == [statuses[d.id]] * 2
        assert state_of(client, d) == State.CLEANED
    assert_healthy(rt, client, other)


def test_second_round_of_waiters_on_a_new_domain(rt, client):
    """Stop, wait again, spawn again, wait again: no waiter of round one
    leaks into round two."""
    for rnd in range(3):
        dom = client.spawn([f"r{rnd}"], core=0, timeout=TIMEOUT)
        ws = [client.wait_async(dom) for _ in range(3)]
        settle(rt, client)
        assert not any(f.done() for f in ws)
        client.exit(dom, rnd, timeout=TIMEOUT)
        settle(rt, client)
        assert [outcome(f) for f in ws] == [rnd] * 3
        assert client.wait(dom, timeout=TIMEOUT) == rnd
    assert_healthy(rt, client)
