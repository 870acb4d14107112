"""Defect 16: fragile FIFO matching.

Barrelfish's C version matched the n-th spawnd reply to the n-th request
sent, unchecked: spawnd only logged its send errors, so one lost or extra
reply silently shifted the matching of every later reply on that spawnd
(and receive elements leaked).

Here every request carries a sequence number that the reply echoes with
its op and domain, and the reply queue (``pending="replyq"``) checks it:

- a duplicate or stale reply (older than every pending request), a reply
  from the future, or one whose op or domain does not match its seq, is
  dropped and counted as a protocol error;
- a reply for a younger request means the older ones lost theirs: their
  clients get REPLY_OUT_OF_ORDER, once;
- later replies still match their own requests, and the manager goes on.

The hashtable strategy finds a reply by (op, domain) and then seq, so its
behaviour differs but is defined too: reordered replies all match, a
duplicate or mismatched one is dropped, and a request whose reply is late
simply waits for it (loss is not detected).
"""

from __future__ import annotations

import pytest

from procmgr.protocol import State
from procmgr.errors import Err
from procmgr.protocol import Msg, Op
from regress_helpers import (
    TIMEOUT, assert_healthy, outcome, settle, state_of,
)

replyq_only = pytest.mark.parametrize("pending", ["replyq"])
hashtable_only = pytest.mark.parametrize("pending", ["hashtable"])


def _held_spawns(rt, n):
    """n clients each spawn on core 0; the spawnd's replies are held:
    (clients, futures, held replies in request order)."""
    clients = [rt.client() for _ in range(n)]
    sd = rt.spawnds[0]
    sd.hold = True
    futs = [c.spawn_async([f"p{i}"], core=0) for i, c in enumerate(clients)]
    settle(rt, *clients)
    assert len(sd.held) == n and not any(f.done() for f in futs)
    replies = list(sd.held)
    sd.held.clear()
    sd.hold = False
    return clients, futs, replies


def _deliver(rt, clients, *replies):
    for r in replies:
        rt.spawnds[0].send(r)
    settle(rt, *clients)


def _errors(rt):
    return rt.manager.spawnds[0].protocol_errors


def _check_spawned(client, fut, reply):
    """``fut`` was answered with the domain that ``reply`` was for."""
    dom = outcome(fut)
    assert dom.id == reply.dom, f"answered with domain {dom.id}, not {reply.dom}"
    assert state_of(client, dom) == State.RUNNING
    return dom


def _finish(rt, clients, doms):
    """The domains still behave (killed, status 9), and every client got
    exactly its answers."""
    c = clients[0]
    for d in doms:
        c.kill(d, timeout=TIMEOUT)
        assert c.wait(d, timeout=TIMEOUT) == 9
    assert_healthy(rt, *clients)


# ---- the reply queue --------------------------------------------------------


@replyq_only
def test_duplicate_reply_is_dropped(rt):
    clients, futs, (ra, rb) = _held_spawns(rt, 2)
    _deliver(rt, clients, ra, ra)
    a = _check_spawned(clients[0], futs[0], ra)
    assert not futs[1].done() and _errors(rt) == 1
    _deliver(rt, clients, rb, rb)          # and a duplicate with nothing pending
    b = _check_spawned(clients[1], futs[1], rb)
    assert _errors(rt) == 2
    _finish(rt, clients, [a, b])


@replyq_only
def test_skipped_seq_fails_the_skipped_client(rt):
    """The first reply is lost: its client gets REPLY_OUT_OF_ORDER when the
    second arrives; the others get their own domains; the lost reply
    turning up late changes nothing."""
    clients, futs, (ra, rb, rc) = _held_spawns(rt, 3)
    _deliver(rt, clients, rb)
    assert outcome(futs[0]) == Err.REPLY_OUT_OF_ORDER
    b = _check_spawned(clients[1], futs[1], rb)
    assert not futs[2].done()
    _deliver(rt, clients, rc, ra)          # ra late: stale, dropped
    c = _check_spawned(clients[2], futs[2], rc)
    assert state_of(clients[0], ra.dom) == State.CLEANED
    assert _errors(rt) == 2                # the loss, the stale reply
    # Later requests on that spawnd still match.
    d = clients[0].spawn(["after"], core=0, timeout=TIMEOUT)
    assert clients[0].status(d, timeout=TIMEOUT).argv == ["after"]
    _finish(rt, clients, [b, c, d])


@replyq_only
@pytest.mark.parametrize("wrong", ["op", "dom"])
def test_reply_for_the_wrong_request(rt, wrong):
    """A reply with the right seq but the wrong op (or domain) matches
    nothing; when the next reply comes, the request it should have
    answered is failed REPLY_OUT_OF_ORDER."""
    clients, futs, (ra, rb) = _held_spawns(rt, 2)
    bad = Msg(Op.SD_KILL if wrong == "op" else Op.SD_SPAWN, ra.seq, ra.core,
              ra.dom if wrong == "op" else rb.dom, ra.nonce).reply()
    _deliver(rt, clients, bad)
    assert not any(f.done() for f in futs) and _errors(rt) == 1
    _deliver(rt, clients, rb)
    assert outcome(futs[0]) == Err.REPLY_OUT_OF_ORDER
    b = _check_spawned(clients[1], futs[1], rb)
    _finish(rt, clients, [b])


@replyq_only
def test_reply_from_the_future_is_dropped(rt):
    clients, futs, (ra,) = _held_spawns(rt, 1)
    _deliver(rt, clients, Msg(Op.SD_SPAWN, ra.seq + 100, 0, ra.dom, ra.nonce).reply())
    assert not futs[0].done() and _errors(rt) == 1
    _deliver(rt, clients, ra)
    a = _check_spawned(clients[0], futs[0], ra)
    _finish(rt, clients, [a])


@replyq_only
def test_reordered_replies(rt):
    """The second reply overtakes the first: the first client is failed,
    not given the second's domain."""
    clients, futs, (ra, rb) = _held_spawns(rt, 2)
    _deliver(rt, clients, rb, ra)
    assert outcome(futs[0]) == Err.REPLY_OUT_OF_ORDER
    b = _check_spawned(clients[1], futs[1], rb)
    _finish(rt, clients, [b])


@replyq_only
def test_sequence_numbers_wrap(rt):
    """Across the u32 wrap, order is still judged right: a skipped reply
    fails its client, a stale duplicate is dropped, the rest match."""
    rt.manager.spawnds[0].next_seq = 0xFFFFFFFE
    clients, futs, replies = _held_spawns(rt, 4)
    assert [r.seq for r in replies] == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    ra, rb, rc, rd = replies
    _deliver(rt, clients, ra, rc, ra, rb, rd)
    assert outcome(futs[1]) == Err.REPLY_OUT_OF_ORDER
    doms = [_check_spawned(clients[i], futs[i], r) for i, r in ((0, ra), (2, rc), (3, rd))]
    assert _errors(rt) == 3          # the loss, the duplicate, the late one
    _finish(rt, clients, doms)


@replyq_only
def test_lost_kill_reply(rt, client):
    """The kill's reply is lost: the killer gets REPLY_OUT_OF_ORDER once a
    later reply shows the loss; the domain is not taken for stopped (it is
    RUNNING, as after any failed kill), and a second kill finishes it."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    sd.hold = True
    kill = client.kill_async(dom)
    settle(rt, client)
    sd.held.clear()                        # lost
    sd.hold = False
    nxt = client.spawn(["b"], core=0, timeout=TIMEOUT)
    assert outcome(kill) == Err.REPLY_OUT_OF_ORDER
    assert state_of(client, dom) == State.RUNNING
    client.kill(dom, timeout=TIMEOUT)      # spawnd: NOT_FOUND, i.e. gone already
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert state_of(client, dom) == State.CLEANED
    _finish(rt, [client], [nxt])


@replyq_only
def test_garbage_from_a_spawnd(rt, client):
    """Undecodable slots and messages that are not replies are counted and
    dropped; matching goes on."""
    clients, futs, (ra,) = _held_spawns(rt, 1)
    sd = rt.spawnds[0]
    assert sd.replies.try_push_all(b"\xee" * 64)                     # unknown op
    sd.send(Msg(Op.SD_SPAWN, ra.seq, 0, ra.dom, ra.nonce))            # not a reply
    sd.send(Msg(Op.SD_EXIT, 0, 0, ra.dom, ra.nonce ^ 1, status=1))    # forged exit
    settle(rt, *clients)
    assert not futs[0].done()
    assert _errors(rt) == 2 and rt.manager.protocol_errors == 1
    _deliver(rt, clients, ra)
    a = _check_spawned(clients[0], futs[0], ra)
    _finish(rt, clients + [client], [a])


# ---- the hashtable: different, defined ----------------------------------------


@hashtable_only
def test_hashtable_matches_reordered_replies(rt):
    clients, futs, replies = _held_spawns(rt, 3)
    _deliver(rt, clients, *reversed(replies))
    doms = [_check_spawned(c, f, r) for c, f, r in zip(clients, futs, replies)]
    assert _errors(rt) == 0
    _finish(rt, clients, doms)


@hashtable_only
def test_hashtable_drops_duplicates_and_mismatches(rt):
    clients, futs, (ra, rb) = _held_spawns(rt, 2)
    wrong_op = Msg(Op.SD_KILL, ra.seq, 0, ra.dom, ra.nonce).reply()
    _deliver(rt, clients, ra, ra, wrong_op)
    a = _check_spawned(clients[0], futs[0], ra)
    assert not futs[1].done() and _errors(rt) == 2
    _deliver(rt, clients, rb)
    b = _check_spawned(clients[1], futs[1], rb)
    _finish(rt, clients, [a, b])


@hashtable_only
def test_hashtable_late_reply_still_matches(rt):
    """A reply that has not come yet is not taken for lost: its client
    waits, and is answered correctly when it does come."""
    clients, futs, (ra, rb) = _held_spawns(rt, 2)
    _deliver(rt, clients, rb)
    b = _check_spawned(clients[1], futs[1], rb)
    assert not futs[0].done()
    _deliver(rt, clients, ra)
    a = _check_spawned(clients[0], futs[0], ra)
    _finish(rt, clients, [a, b])
