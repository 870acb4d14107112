"""Defect 3: requests lost when an enqueue fails.

In Barrelfish, when queueing a request to a spawnd failed, the spawn,
span, kill or cleanup path freed an element still linked in the queue and
carried on as if it had been sent: the client was never answered and a
kill never reached STOPPED.

Here queueing cannot fail (a full ring or reply queue is backpressure,
defect 2); what can fail is answered at once, exactly once: a full domain
table (CREATE_DOMAIN_CAP), a malformed request (BAD_MESSAGE), a spawnd
whose worker is gone (INVALID_SPAWND), and a request queued to a worker
that dies before answering it (SPAWND_DIED).
"""

from __future__ import annotations

from procmgr.protocol import State
from procmgr.errors import Err
from procmgr.protocol import Flag, Msg, Op
from regress_helpers import (
    TIMEOUT, assert_healthy, error_of, outcome, requests_for, settle, state_of,
)


def test_every_kind_of_request_gets_through_under_pressure(make_rt):
    """spawn, span, kill and the cleanups it triggers all reach the
    spawnds with the smallest ring and reply queue; the kill reaches
    STOPPED and the cleanup CLEANED on both cores."""
    rt = make_rt(cores=2, ring_capacity=2, reply_queue=1)
    c = rt.client()
    dom = c.spawn(["a"], core=0, timeout=TIMEOUT)
    assert c.span(dom, 1, timeout=TIMEOUT) > 0
    waiter = c.wait_async(dom)
    c.kill(dom, timeout=TIMEOUT)
    assert c.wait_for(waiter, timeout=TIMEOUT) == 9
    info = c.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status, info.cores) == (State.CLEANED, 9, [0, 1])
    for core in (0, 1):
        sd = rt.spawnds[core]
        assert requests_for(sd, dom.id, Op.SD_KILL) == 1
        assert requests_for(sd, dom.id, Op.SD_CLEANUP) == 1
    assert_healthy(rt, c)


def test_full_domain_table_is_answered(rt, client):
    rt.manager.table.capacity = 1
    first = client.spawn(["a"], core=0, timeout=TIMEOUT)
    assert error_of(client.spawn, ["b"], core=0) == Err.CREATE_DOMAIN_CAP
    assert error_of(client.spawn, ["b"], core=1) == Err.CREATE_DOMAIN_CAP
    assert client.domains(timeout=TIMEOUT) == [first.id], "a refused spawn left an entry"
    client.kill(first, timeout=TIMEOUT)
    assert client.wait(first, timeout=TIMEOUT) == 9
    # The table has room again once the first domain is cleaned up.
    assert_healthy(rt, client)


def test_malformed_spawn_is_answered(rt, client):
    """A spawn whose payload cannot be decoded gets BAD_MESSAGE, once."""
    fut = client.request(Msg(Op.SPAWN, core=0, payload=b"\x01\x00"))
    settle(rt, client)
    assert outcome(fut) == Err.BAD_MESSAGE
    assert rt.spawnds[0].log == [], "a malformed spawn reached the spawnd"
    assert client.domains(timeout=TIMEOUT) == []
    assert_healthy(rt, client)


def test_request_the_manager_does_not_serve_is_answered(rt, client):
    """A spawnd-only op, or a message flagged as a reply, sent by a client:
    UNKNOWN_OP, once each; nothing reaches a spawnd."""
    futs = [client.request(Msg(Op.SD_KILL, dom=1)),
            client.request(Msg(Op.SD_SPAWN, core=0)),
            client.request(Msg(Op.KILL, dom=1, flags=Flag.REPLY))]
    settle(rt, client)
    assert [outcome(f) for f in futs] == [Err.UNKNOWN_OP] * 3
    assert rt.spawnds[0].log == [] and rt.spawnds[1].log == []
    assert_healthy(rt, client)


def test_requests_to_a_dying_worker_are_answered(make_rt):
    """The worker of core 1 dies with a span, spawns and a kill pending on
    it (one sent, the rest still in the send queue): each is answered --
    SPAWND_DIED for the span and the spawns, OK for the kill, whose domain
    stopped with its worker -- and nothing waits forever."""
    rt = make_rt(cores=2, reply_queue=1)
    c = rt.client()
    home = c.spawn(["home"], core=0, timeout=TIMEOUT)
    there = c.spawn(["there"], core=1, timeout=TIMEOUT)
    sd1 = rt.spawnds[1]
    sd1.hold = True
    span = c.span_async(home, 1)
    spawns = [c.spawn_async([f"s{i}"], core=1) for i in range(3)]
    kill = c.kill_async(there)
    waits = [c.wait_async(home), c.wait_async(there)]
    settle(rt, c)
    assert [m.op for m in sd1.log] == [Op.SD_SPAWN, Op.SD_SPAN]   # one slot: the span
    assert rt.manager.spawnds[1].queued == 4                     # 3 spawns, the kill
    assert not any(f.done() for f in (span, kill, *spawns, *waits))

    # The runtime calls spawnd_died when a worker's pidfd fires; the
    # simulated worker just stops being stepped.
    rt.spawnds.pop(1)
    rt.manager.spawnd_died(1)
    settle(rt, c)
    assert outcome(span) == Err.SPAWND_DIED
    assert [outcome(f) for f in spawns] == [Err.SPAWND_DIED] * 3
    assert outcome(kill) is None
    assert outcome(waits[1]) == 9
    # The span had reached the worker, so its dispatcher may have run and
    # died with it (SIGKILL): the domain is stopped everywhere, not left
    # half alive, and reported as killed by signal 9.
    assert outcome(waits[0]) == -9
    assert state_of(c, home) == State.CLEANED
    assert state_of(c, there) == State.CLEANED
    assert requests_for(rt.spawnds[0], home.id, Op.SD_KILL) == 1
    assert error_of(c.spawn, ["late"], core=1) == Err.INVALID_SPAWND
    assert_healthy(rt, c)
