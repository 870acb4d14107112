"""Defect 5: span never recorded.

Barrelfish stopped calling ``domain_span`` in 2b03afffd: the new core was
never added to the domain, so ALREADY_SPANNED protected only the spawn
core (a second span to another core made that spawnd assert), and kill
and cleanup never reached spanned dispatchers.

Here a span is recorded: kill and cleanup go to every core the domain
runs on (the simulated spawnds' logs show it), and a span to a core the
domain already has, or is being spanned to, is ALREADY_SPANNED.
"""

from __future__ import annotations

from procmgr.protocol import State
from procmgr.errors import Err
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, error_of, outcome, requests_for, settle, state_of,
)


def test_kill_and_cleanup_reach_the_spanned_core(make_rt):
    rt = make_rt(cores=3)
    c = rt.client()
    dom = c.spawn(["a"], core=0, timeout=TIMEOUT)
    c.span(dom, 2, timeout=TIMEOUT)
    assert c.status(dom, timeout=TIMEOUT).cores == [0, 2]
    c.kill(dom, timeout=TIMEOUT)
    assert c.wait(dom, timeout=TIMEOUT) == 9
    assert state_of(c, dom) == State.CLEANED
    for core, reached in ((0, 1), (1, 0), (2, 1)):
        sd = rt.spawnds[core]
        assert requests_for(sd, dom.id, Op.SD_KILL) == reached
        assert requests_for(sd, dom.id, Op.SD_CLEANUP) == reached
    assert dom.id not in rt.spawnds[2].dispatchers, "spanned dispatcher left running"
    assert_healthy(rt, c)


def test_exit_reaches_the_spanned_core(rt, client):
    """The domain's own exit stops its spanned dispatcher too."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    client.span(dom, 1, timeout=TIMEOUT)
    client.exit(dom, 4, timeout=TIMEOUT)
    assert client.wait(dom, timeout=TIMEOUT) == 4
    assert state_of(client, dom) == State.CLEANED
    assert requests_for(rt.spawnds[1], dom.id, Op.SD_KILL) == 1
    assert requests_for(rt.spawnds[1], dom.id, Op.SD_CLEANUP) == 1
    assert_healthy(rt, client)


def test_span_twice_to_the_same_core(rt, client):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    client.span(dom, 1, timeout=TIMEOUT)
    assert error_of(client.span, dom, 1) == Err.ALREADY_SPANNED
    assert error_of(client.span, dom, 0) == Err.ALREADY_SPANNED    # the spawn core
    assert requests_for(rt.spawnds[1], dom.id, Op.SD_SPAN) == 1
    assert client.status(dom, timeout=TIMEOUT).cores == [0, 1]
    client.kill(dom, timeout=TIMEOUT)
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert_healthy(rt, client)


def test_span_twice_while_the_first_is_pending(rt, client, other):
    """Two clients span the domain to one core at once: the second is
    refused before anything reaches the spawnd; the first completes."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd1 = rt.spawnds[1]
    sd1.hold = True
    first = client.span_async(dom, 1)
    second = other.span_async(dom, 1)
    settle(rt, client, other)
    assert outcome(second) == Err.ALREADY_SPANNED
    assert not first.done()
    assert requests_for(sd1, dom.id, Op.SD_SPAN) == 1
    sd1.hold = False
    sd1.release()
    settle(rt, client, other)
    assert outcome(first) > 0
    client.kill(dom, timeout=TIMEOUT)
    assert other.wait(dom, timeout=TIMEOUT) == 9
    assert requests_for(sd1, dom.id, Op.SD_KILL) == 1
    assert_healthy(rt, client, other)


def test_kill_while_span_pending_reaches_the_new_core(rt, client):
    """A kill sent while the span is in flight is ordered after it on that
    spawnd, so it finds (and ends) the new dispatcher."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd1 = rt.spawnds[1]
    sd1.hold = True
    span = client.span_async(dom, 1)
    kill = client.kill_async(dom)
    settle(rt, client)
    assert [m.op for m in sd1.log if m.dom == dom.id] == [Op.SD_SPAN, Op.SD_KILL]
    assert not kill.done()
    sd1.hold = False
    sd1.release()
    settle(rt, client)
    assert outcome(span) > 0
    assert outcome(kill) is None
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert dom.id not in sd1.dispatchers
    assert requests_for(sd1, dom.id, Op.SD_CLEANUP) == 1
    assert state_of(client, dom) == State.CLEANED
    assert_healthy(rt, client)


def test_spanned_dispatcher_exit_leaves_the_domain_running(rt, client):
    """A spanned dispatcher that ends by itself is counted once: the domain
    runs on at home, and a later kill goes only where it still runs, while
    cleanup still reaches both cores."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    client.span(dom, 1, timeout=TIMEOUT)
    rt.spawnds[1].exit(dom.id, 0)
    settle(rt, client)
    assert state_of(client, dom) == State.RUNNING
    assert client.wait(dom, nohang=True, timeout=TIMEOUT) is None
    client.kill(dom, timeout=TIMEOUT)
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert requests_for(rt.spawnds[0], dom.id, Op.SD_KILL) == 1
    assert requests_for(rt.spawnds[1], dom.id, Op.SD_KILL) == 0
    for core in (0, 1):
        assert requests_for(rt.spawnds[core], dom.id, Op.SD_CLEANUP) == 1
    assert state_of(client, dom) == State.CLEANED
    assert_healthy(rt, client)
