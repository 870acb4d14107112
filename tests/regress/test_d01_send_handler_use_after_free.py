"""Defect 1: use-after-free in the send handler.

Barrelfish's ``spawnd_send_handler`` read ``m->st`` after ``cont()`` had
freed ``m``, and the NULL check in ``spawn_reply_handler`` ran only after
``dequeue`` had asserted that the queue was not empty.

Here a pending slot has one owner at a time, and the reply handler runs
between ``match`` and ``release``: a request the handler sends meanwhile
(a cleanup after the last kill reply, a kill deferred until the spawn
reply) can never be given the slot it is still reading. The tests make
that reuse as likely as it gets -- a reply queue of ONE slot, so every new
request would take exactly the slot being read -- and check that every
client is answered with its own result. A reply when nothing is pending
is dropped, not dereferenced.
"""

from __future__ import annotations

from procmgr.protocol import State
from procmgr.protocol import Msg, Op
from regress_helpers import (
    TIMEOUT, assert_all_answered, assert_healthy, child_cap, outcome, requests_for,
    settle, state_of,
)


def test_handler_sends_while_its_slot_is_the_only_one(make_rt):
    """Kill reply -> cleanup request, with a one-slot reply queue."""
    rt = make_rt(cores=2, reply_queue=1)
    c = rt.client()
    dom = c.spawn(["a"], core=0, timeout=TIMEOUT)
    c.span(dom, 1, timeout=TIMEOUT)
    c.kill(dom, timeout=TIMEOUT)
    assert c.wait(dom, timeout=TIMEOUT) == 9
    info = c.status(dom, timeout=TIMEOUT)
    assert info.state == State.CLEANED and info.exit_status == 9
    for core in (0, 1):
        assert requests_for(rt.spawnds[core], dom.id, Op.SD_CLEANUP) == 1
    assert_healthy(rt, c)


def test_deferred_kill_sent_from_spawn_reply_handler(make_rt):
    """The spawn reply handler sends the kill that overtook it, while it
    still holds the only slot; both clients get their own answer."""
    rt = make_rt(cores=1, reply_queue=1)
    spawner, killer = rt.client(), rt.client()
    sd = rt.spawnds[0]
    sd.hold = True
    spawned = spawner.spawn_async(["a"], core=0)
    settle(rt)
    cap = child_cap(sd)
    killed = killer.kill_async(cap)
    settle(rt, spawner, killer)
    assert not spawned.done() and not killed.done()
    sd.hold = False
    sd.release()
    settle(rt, spawner, killer)
    dom = outcome(spawned)
    assert (dom.id, dom.nonce) == (cap.id, cap.nonce)
    assert outcome(killed) is None
    assert spawner.wait(dom, timeout=TIMEOUT) == 9
    assert state_of(spawner, dom) == State.CLEANED
    assert_healthy(rt, spawner, killer)


def test_many_clients_each_get_their_own_answer(make_rt):
    """One slot reused for every request in turn: no answer goes to the
    wrong client, none is lost, none is repeated."""
    rt = make_rt(cores=2, reply_queue=1)
    clients = [rt.client() for _ in range(4)]
    futs = []
    for i in range(12):
        c = clients[i % 4]
        futs.append((c, i, c.spawn_async([f"prog{i}"], core=i % 2)))
    doms = [(c, i, c.wait_for(f, timeout=TIMEOUT)) for c, i, f in futs]
    assert len({d.id for _, _, d in doms}) == 12
    for c, i, dom in doms:
        info = c.status(dom, timeout=TIMEOUT)
        assert info.argv == [f"prog{i}"] and info.cores == [i % 2]
    kills = [(c, c.kill_async(dom)) for c, _, dom in doms]
    waits = [(c, c.wait_async(dom)) for c, _, dom in doms]
    for c, f in kills:
        assert c.wait_for(f, timeout=TIMEOUT) is None
    for c, f in waits:
        assert c.wait_for(f, timeout=TIMEOUT) == 9
    assert_healthy(rt, *clients)


def test_reply_with_nothing_pending_is_dropped(rt, client):
    """An empty reply queue is not dereferenced: the stray reply is dropped."""
    sd = rt.spawnds[0]
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    stray = Msg(Op.SD_KILL, seq=999, dom=dom.id, nonce=dom.nonce).reply()
    sd.send(stray)
    settle(rt, client)
    assert rt.manager.spawnds[0].protocol_errors == 1
    assert state_of(client, dom) == State.RUNNING
    client.kill(dom, timeout=TIMEOUT)
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert_all_answered(rt, client)
    assert_healthy(rt, client)
