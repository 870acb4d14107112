"""Events (procmgr/manager/events.py, procmgr/client/events.py) through the
in-process runtime: the log's numbering and bound, what a consumer that
fell behind is told, the long poll, and the bad requests a client can make."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings, strategies as st

from procmgr.client.events import EventCursor, check_kinds
from procmgr.errors import Err, ProcMgmtError
from procmgr.manager.events import WAITING_PER_CLIENT
from procmgr.protocol import (
    EVENT_FIXED, EVENTS_FROM_NOW, EVENTS_WAIT_MAX_MS, MAX_PAYLOAD, EventKind, Msg, Op, ProtocolError,
    decode_events,
)
from procmgr.testing.inprocess import InProcessRuntime


def spawn_and_kill(client, n: int) -> list:
    doms = [client.spawn(["x"], core=0) for _ in range(n)]
    for d in doms:
        client.kill(d)
    return doms


def test_events_are_numbered_in_order_and_a_late_reader_is_told_what_it_lost():
    with InProcessRuntime(cores=1, releases=True, events=8) as rt:
        pm = rt.client()
        doms = spawn_and_kill(pm, 10)        # 20 events: each spawned, then killed
        first, lost, records = pm.wait_for(pm.events_async(0), 5)
        assert (first, lost) == (13, 12)
        assert [r.seq for r in records] == list(range(13, 21))
        # All ten spawned (1..10), then all ten killed (11..20): the last
        # eight are the kills of the last eight, with status 9.
        assert [(r.kind, r.dom, r.status) for r in records] == \
            [(EventKind.KILLED, d.id, 9) for d in doms[2:]]
        # Caught up: nothing more, and no loss; from now on starts after 20.
        assert pm.wait_for(pm.events_async(20), 5) == (21, 0, [])
        assert pm.wait_for(pm.events_async(EVENTS_FROM_NOW), 5) == (21, 0, [])
        # A seq not issued yet (a manager since restarted) reads as now.
        assert pm.wait_for(pm.events_async(10_000), 5) == (21, 0, [])


def test_the_client_iterator_yields_a_lost_event_then_goes_on_in_order():
    with InProcessRuntime(cores=1, releases=True, events=8) as rt:
        pm = rt.client()
        spawn_and_kill(pm, 10)
        got = []
        with pytest.raises(TimeoutError):
            for event in pm.events(after=0, timeout=0):
                got.append(event)
        assert got[0].kind == "lost" and got[0].lost == 12 and got[0].seq == 13
        assert [e.seq for e in got[1:]] == list(range(13, 21))
        assert {e.kind for e in got[1:]} == {"killed"}
        assert all(e.returncode == 9 for e in got[1:])


def test_an_answer_holds_what_fits_and_the_rest_comes_next():
    with InProcessRuntime(cores=1, releases=True) as rt:
        pm = rt.client()
        for f in [pm.spawn_async(["x"], core=0) for _ in range(600)]:
            pm.wait_for(f, 5)
        first, lost, records = pm.wait_for(pm.events_async(0), 5)
        assert first == 1 and lost == 0 and 0 < len(records) < 600
        assert 16 + 28 * len(records) <= MAX_PAYLOAD
        while True:
            more = pm.wait_for(pm.events_async(records[-1].seq), 5)[2]
            if not more:
                break
            records += more
        assert [r.seq for r in records] == list(range(1, 601))
        # The iterator asks until it has caught up, timeout=0 or not.
        got = []
        with pytest.raises(TimeoutError):
            for event in pm.events(after=0, timeout=0):
                got.append(event.seq)
        assert got == list(range(1, 601))


def test_a_waiting_request_is_answered_by_the_next_event_or_when_its_wait_is_over():
    with InProcessRuntime(cores=1, releases=True) as rt:
        pm = rt.client()
        waiting = pm.events_async(EVENTS_FROM_NOW, 30)
        rt.pump()
        assert not waiting.done()
        d = pm.spawn(["x"], core=0)
        assert waiting.done()
        first, lost, records = waiting.result()
        assert (first, lost) == (1, 0) and [(r.kind, r.dom) for r in records] == [(1, d.id)]
        short = pm.events_async(1, 0.05)
        rt.pump()
        assert not short.done()
        time.sleep(0.06)
        rt.pump()
        assert short.result(5) == (2, 0, [])


def test_bad_events_requests_are_answered_with_what_is_wrong():
    with InProcessRuntime(cores=1) as rt:
        pm = rt.client()
        for status in (-1, EVENTS_WAIT_MAX_MS + 1):
            fut = pm.request(Msg(Op.EVENTS, nonce=0, status=status))
            with pytest.raises(ProcMgmtError) as bad:
                pm.wait_for(fut, 5)
            assert bad.value.code == Err.BAD_MESSAGE and "ms" in str(bad.value)
        with pytest.raises(ValueError):
            EventCursor(after=-1)
        with pytest.raises(ValueError):
            EventCursor(after=True)
        with pytest.raises(ValueError, match="unknown event kind 'nope'"):
            check_kinds(["exited", "nope"])


def test_one_client_may_keep_so_many_requests_waiting_and_is_told_past_that():
    with InProcessRuntime(cores=1, releases=True) as rt:
        pm, other = rt.client(), rt.client()
        waiting = [pm.events_async(EVENTS_FROM_NOW, 30) for _ in range(WAITING_PER_CLIENT)]
        extra = pm.events_async(EVENTS_FROM_NOW, 30)
        with pytest.raises(ProcMgmtError) as busy:
            pm.wait_for(extra, 5)
        assert busy.value.code == Err.BUSY
        assert not any(f.done() for f in waiting)
        theirs = other.events_async(EVENTS_FROM_NOW, 30)   # another client's are its own
        other.spawn(["x"], core=0)
        rt.pump()
        assert all(len(f.result(5)[2]) == 1 for f in waiting + [theirs])


def test_a_client_that_leaves_with_requests_waiting_costs_nobody_else():
    with InProcessRuntime(cores=1, releases=True) as rt:
        gone, stays = rt.client(), rt.client()
        for _ in range(10):
            gone.events_async(EVENTS_FROM_NOW, 30)
        rt.pump()
        gone.close()
        rt.pump()
        mine = stays.events_async(EVENTS_FROM_NOW, 30)
        d = stays.spawn(["x"], core=0)
        assert [r.dom for r in mine.result(5)[2]] == [d.id]
        assert rt.manager.internal_errors == 0 and rt.manager.event_feed.waiting == {}


def test_an_events_answer_that_does_not_add_up_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        decode_events(b"\x01" * 15)
    head = (1).to_bytes(8, "little") + bytes(8)
    with pytest.raises(ProtocolError, match="cut inside event 1"):
        decode_events(head + bytes(EVENT_FIXED - 1))
    with pytest.raises(ProtocolError, match="name"):          # says 5 bytes, has 2
        decode_events(head + bytes(26) + (5).to_bytes(2, "little") + bytes(20) + b"ab")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_as_events_or_a_protocol_error(data):
    try:
        first, lost, records = decode_events(data)
    except ProtocolError:
        return
    assert [r.seq for r in records] == list(range(first, first + len(records)))


def test_a_request_parked_after_an_event_does_not_hold_back_those_before_it():
    """An event recorded in the pass that also parks a request "from now
    on" still answers the requests that waited before it."""
    with InProcessRuntime(cores=1, releases=True) as rt:
        early, late, spawner = rt.client(), rt.client(), rt.client()
        waiting = early.events_async(EVENTS_FROM_NOW, 30)
        rt.pump()
        spawned = spawner.spawn_async(["x"], core=0)
        rt.run_manager()                    # the spawn goes to the worker
        rt.spawnds[0].step()                # its reply is in the ring
        behind = late.events_async(EVENTS_FROM_NOW, 30)    # read in the same pass
        rt.pump()
        d = spawner.wait_for(spawned, 5)
        assert [r.dom for r in waiting.result(5)[2]] == [d.id]
        assert not behind.done()            # it asked after the spawn: it waits on


def test_requests_answered_early_leave_no_timers_behind():
    """Each request waits up to 60 s but is answered by the next event at
    once: neither the loop's timers nor the feed's deadlines pile up."""
    with InProcessRuntime(cores=1, releases=True) as rt:
        pm, spawner = rt.client(), rt.client()
        for _ in range(100):
            waiting = [pm.events_async(EVENTS_FROM_NOW, 60) for _ in range(WAITING_PER_CLIENT)]
            rt.pump()
            spawner.spawn(["x"], core=0)
            assert all(f.result(5)[2] for f in waiting)
        feed = rt.manager.event_feed
        assert feed.count == 0 and feed.waiting == {} and feed._deadlines == []
        assert len(rt.loop._timers) <= 2


def test_requests_waiting_in_all_are_bounded(monkeypatch):
    from procmgr.manager import events
    monkeypatch.setattr(events, "WAITING_MAX", 10)
    with InProcessRuntime(cores=1, releases=True) as rt:
        clients = [rt.client() for _ in range(4)]
        waiting = [c.events_async(EVENTS_FROM_NOW, 30) for c in clients for _ in range(3)]
        rt.pump()
        for c in clients:
            c.poll()                        # the answers there are, taken in
        busy = [f for f in waiting if f.done()]
        assert len(busy) == 2
        for f in busy:
            with pytest.raises(ProcMgmtError, match="10 in all wait already") as e:
                f.result(0)
            assert e.value.code == Err.BUSY
        clients[0].spawn(["x"], core=0)
        assert all(len(f.result(5)[2]) == 1 for f in waiting if f not in busy)
