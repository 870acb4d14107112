"""Defect 15: spawn/exit race.

spawnd makes the child runnable before it replies, so the child (or
whoever it hands its cap to) can exit, be killed, spanned or waited for
before the manager has seen the spawn reply. Barrelfish created the
domain entry only at the reply: those requests got DOMAIN_TABLE_FIND, and
a lost exit left the domain blocked in its exit call, never STOPPED.

Here the entry exists (state NIL) from the moment the spawn is accepted:
a kill that overtakes the reply is deferred and carried out after it, an
exit call is acknowledged at once and applied after it, a wait waits, a
nohang wait says "still running", get_status shows NIL, and a span is
refused with DOMAIN_NOT_RUNNING. Every test holds the spawn reply back
(``spawnd.hold``), sends the racing request, pumps, then releases.
"""

from __future__ import annotations

import pytest

from procmgr.protocol import State
from procmgr.errors import Err
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, child_cap, outcome, requests_for, settle,
    state_of,
)


@pytest.fixture
def held(rt, client):
    """A spawn on core 0 whose reply is held back: (future, the child's cap)."""
    sd = rt.spawnds[0]
    sd.hold = True
    fut = client.spawn_async(["child", "arg"], core=0)
    settle(rt, client)
    assert not fut.done()
    return fut, child_cap(sd)


def _release(rt, *clients):
    sd = rt.spawnds[0]
    sd.hold = False
    sd.release()
    settle(rt, *clients)


def test_kill_before_spawn_reply(rt, client, other, held):
    spawned, cap = held
    kill = other.kill_async(cap)
    settle(rt, client, other)
    assert not kill.done()
    assert requests_for(rt.spawnds[0], cap.id, Op.SD_KILL) == 0
    _release(rt, client, other)
    dom = outcome(spawned)
    assert (dom.id, dom.nonce) == (cap.id, cap.nonce)
    assert outcome(kill) is None
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert [m.op for m in rt.spawnds[0].log] == [Op.SD_SPAWN, Op.SD_KILL, Op.SD_CLEANUP]
    assert state_of(client, dom) == State.CLEANED
    assert_healthy(rt, client, other)


def test_exit_before_spawn_reply(rt, client, other, held):
    spawned, cap = held
    # The child itself calls exit: answered at once, reply still held.
    assert other.exit(cap, 7, timeout=TIMEOUT) is None
    assert not spawned.done()
    waiter = client.wait_async(cap)
    _release(rt, client, other)
    assert outcome(spawned).id == cap.id
    assert outcome(waiter) == 7
    info = client.status(cap, timeout=TIMEOUT)
    assert (info.state, info.exit_status) == (State.CLEANED, 7)
    assert_healthy(rt, client, other)


def test_wait_and_queries_before_spawn_reply(rt, client, other, held):
    spawned, cap = held
    waiter = other.wait_async(cap)
    nohang = other.wait_async(cap, nohang=True)
    span = other.span_async(cap, 1)
    settle(rt, client, other)
    assert outcome(nohang) is None
    assert outcome(span) == Err.DOMAIN_NOT_RUNNING
    assert not waiter.done()
    info = other.status(cap.id, timeout=TIMEOUT)
    assert (info.state, info.argv, info.exit_status) == (State.NIL, ["child", "arg"], None)
    assert cap.id in other.domains(timeout=TIMEOUT)
    _release(rt, client, other)
    dom = outcome(spawned)
    assert state_of(client, dom) == State.RUNNING
    assert not waiter.done(), "a wait was answered by the spawn reply"
    # Now the span works, and the kill answers the early waiter.
    assert other.span(dom, 1, timeout=TIMEOUT) > 0
    client.kill(dom, timeout=TIMEOUT)
    assert other.wait_for(waiter, timeout=TIMEOUT) == 9
    assert_healthy(rt, client, other)


@pytest.mark.parametrize("order", ["exit-kill", "kill-exit"])
def test_exit_and_kill_before_spawn_reply(rt, client, other, held, order):
    """Both overtake the reply; they are applied in arrival order: the
    first one's status stands, the killer is answered OK either way."""
    spawned, cap = held
    if order == "exit-kill":
        ex = other.exit_async(cap, 5)
        settle(rt, other)
        kill = client.kill_async(cap)
    else:
        kill = client.kill_async(cap)
        settle(rt, client)
        ex = other.exit_async(cap, 5)
    waiter = client.wait_async(cap)
    settle(rt, client, other)
    assert outcome(ex) is None
    assert not kill.done() and not waiter.done()
    _release(rt, client, other)
    assert outcome(spawned).id == cap.id
    assert outcome(kill) is None
    assert outcome(waiter) == (5 if order == "exit-kill" else 9)
    assert requests_for(rt.spawnds[0], cap.id, Op.SD_KILL) == 1
    assert state_of(client, cap) == State.CLEANED
    assert_healthy(rt, client, other)


def test_dispatcher_exit_reported_before_spawn_reply(rt, client, held):
    """The child ends at once and its worker reports that before the spawn
    reply reaches the manager (the simulated worker can: its replies are
    held back, its exit report is not)."""
    spawned, cap = held
    waiter = client.wait_async(cap)
    rt.spawnds[0].exit(cap.id, 3)
    settle(rt, client)
    _release(rt, client)
    assert outcome(spawned).id == cap.id
    assert waiter.done(), "the exit was lost: the domain never stops"
    assert outcome(waiter) == 3
    assert state_of(client, cap) == State.CLEANED
    assert_healthy(rt, client)
