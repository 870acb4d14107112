"""Defect 2: TX-busy requeue asserts.

Barrelfish put an element that met FLOUNDER_ERR_TX_BUSY back at the front
of the send queue, but ``dequeue`` had not cleared its ``next`` and
``enqueue_at_front`` asserted it: a busy channel with anything queued
behind aborted proc_mgmt.

Here a full request ring or a full reply queue is backpressure: requests
wait in the send queue (and the core's outbox), in order, and are all
sent and answered in that order once there is room again.
"""

from __future__ import annotations

from procmgr.protocol import State
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, outcome, settle, spawn_log, state_of,
)


def _in_order(doms, sd) -> None:
    """Domains were created in request order and reached the spawnd in it."""
    ids = [d.id for d in doms]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [m.dom for m in spawn_log(sd)] == ids
    seqs = [m.seq for m in sd.log]
    assert seqs == sorted(seqs), "requests reached the spawnd out of order"


def test_full_request_ring_queues_in_order(make_rt):
    """The spawnd does not read its ring (it is busy): requests fill the
    ring, then the core's outbox, then the send queue. Nothing is lost,
    nothing overtakes."""
    rt = make_rt(cores=1, ring_capacity=4)
    clients = [rt.client() for _ in range(3)]
    futs = []
    for i in range(24):
        c = clients[i % 3]
        # A long argv: two slots per request, so the ring fills mid-message.
        futs.append((c, c.spawn_async([f"{'x' * 40}{i}"], core=0)))
        rt.run_manager()          # the manager runs, the spawnd does not
    sd_state = rt.manager.spawnds[0]
    assert sd_state.queued > 0 and sd_state.backlog, "ring never filled"
    assert not any(f.done() for _, f in futs)
    doms = [c.wait_for(f, timeout=TIMEOUT) for c, f in futs]
    _in_order(doms, rt.spawnds[0])
    for i, (c, dom) in enumerate(zip([c for c, _ in futs], doms)):
        assert c.status(dom, timeout=TIMEOUT).argv == [f"{'x' * 40}{i}"]
    assert_healthy(rt, *clients)


def test_full_reply_queue_queues_in_order(make_rt):
    """Replies are held back: once the reply queue (2 slots) is full, the
    rest wait in the send queue; each released reply lets one more out."""
    rt = make_rt(cores=1, reply_queue=2)
    c = rt.client()
    sd = rt.spawnds[0]
    sd.hold = True
    futs = [c.spawn_async([f"p{i}"], core=0) for i in range(10)]
    settle(rt, c)
    assert len(sd.log) == 2 and rt.manager.spawnds[0].queued == 8
    for n in range(1, 11):
        sd.release(1)
        settle(rt, c)
        done = [f.done() for f in futs]
        assert done == [True] * n + [False] * (10 - n), "answered out of order"
        assert len(sd.log) == min(n + 2, 10)
    doms = [outcome(f) for f in futs]
    _in_order(doms, sd)
    sd.hold = False
    assert_healthy(rt, c)


def test_kills_and_cleanups_queue_behind_spawns(make_rt):
    """Backpressure on every request kind at once: spawns, kills and the
    manager's own cleanups share one small ring and a one-slot reply
    queue, and every domain still goes RUNNING -> CLEANED with status 9."""
    rt = make_rt(cores=2, ring_capacity=4, reply_queue=1)
    c = rt.client()
    doms = [c.wait_for(f, timeout=TIMEOUT)
            for f in [c.spawn_async([f"p{i}"], core=i % 2) for i in range(8)]]
    kills = [c.kill_async(d) for d in doms]
    more = [c.spawn_async([f"q{i}"], core=i % 2) for i in range(8)]
    waits = [c.wait_async(d) for d in doms]
    for f in kills:
        assert c.wait_for(f, timeout=TIMEOUT) is None
    for f in waits:
        assert c.wait_for(f, timeout=TIMEOUT) == 9
    fresh = [c.wait_for(f, timeout=TIMEOUT) for f in more]
    for d in doms:
        assert state_of(c, d) == State.CLEANED
    for d in fresh:
        assert state_of(c, d) == State.RUNNING
    for core in (0, 1):
        sd = rt.spawnds[core]
        kinds = [m.op for m in sd.log]
        assert kinds.count(Op.SD_KILL) == kinds.count(Op.SD_CLEANUP) == 4
    assert_healthy(rt, c)


def test_client_that_does_not_read_its_answers(make_rt):
    """A client's answer ring is full: its answers wait in order in the
    manager's backlog, the manager reads no more of its requests meanwhile
    (that is its backpressure), and other clients are still served."""
    rt = make_rt(cores=1, ring_capacity=4)
    slow, fast = rt.client(), rt.client()
    dom = slow.spawn(["a"], core=0, timeout=TIMEOUT)
    futs = []
    for _ in range(3):
        futs += [slow.wait_async(dom, nohang=True) for _ in range(3)]
        rt.run_manager()             # answers pile up: slow reads nothing
    binding = next(b for b in rt.manager.clients.values() if b.backlog)
    assert binding.backlog > 0
    other = fast.spawn(["b"], core=0, timeout=TIMEOUT)
    assert state_of(fast, other) == State.RUNNING
    assert not any(f.done() for f in futs)
    futs += [slow.wait_async(dom, nohang=True) for _ in range(8)]
    assert [slow.wait_for(f, timeout=TIMEOUT) for f in futs] == [None] * len(futs)
    slow.kill(dom, timeout=TIMEOUT)
    assert slow.wait(dom, nohang=True, timeout=TIMEOUT) == 9
    assert_healthy(rt, slow, fast)
