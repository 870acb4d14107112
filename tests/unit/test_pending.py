"""Unit tests of procmgr.manager.pending: the two pending-client strategies.

Shared behaviour runs against both ``make_pending("replyq")`` and
``make_pending("hashtable")``; what only the reply queue promises (in-order
release, lost-reply detection, preallocated slots) is tested on it alone.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procmgr.manager.pending import (
    STRATEGIES,
    HashTable,
    PendingSlot,
    ReplyQueue,
    make_pending,
    seq_before,
)
from procmgr.protocol import Op

FAST = settings(max_examples=100, deadline=None, database=None)

KINDS = ["replyq", "hashtable"]
WRAP = [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
KILL, SPAN, SPAWN = Op.SD_KILL, Op.SD_SPAN, Op.SD_SPAWN


@pytest.fixture(params=KINDS)
def pending(request):
    return make_pending(request.param, 8)


def claim_all(p, seqs, op=KILL, dom=1):
    return [p.claim(s, op, dom) for s in seqs]


def answer_in_order(p, slots):
    """Match and release each slot as its in-order reply arrives."""
    for slot in slots:
        seq, op, dom = slot.seq, slot.op, slot.dom
        got, lost = p.match(seq, op, dom)
        assert got is slot and not lost
        p.release(slot)


# ---- shared behaviour ---------------------------------------------------------

def test_make_pending_kinds():
    for kind, cls in (("replyq", ReplyQueue), ("hashtable", HashTable)):
        p = make_pending(kind, 16)
        assert type(p) is cls and p.kind == kind and p.capacity == 16
        assert len(p) == 0 and p.has_room()
    assert set(STRATEGIES) == set(KINDS)


def test_make_pending_unknown_names_the_choices():
    with pytest.raises(ValueError) as exc:
        make_pending("nope")
    msg = str(exc.value)
    assert "replyq" in msg and "hashtable" in msg and "'nope'" in msg


def test_claim_match_release_in_order(pending):
    slots = [pending.claim(10, KILL, 1), pending.claim(11, SPAN, 2), pending.claim(12, SPAWN, 3)]
    assert len(pending) == 3
    assert [(s.seq, s.op, s.dom) for s in slots] == [(10, KILL, 1), (11, SPAN, 2), (12, SPAWN, 3)]
    for n, slot in enumerate(slots):
        got, lost = pending.match(slot.seq, slot.op, slot.dom)
        assert got is slot
        assert list(lost) == []
        assert len(pending) == 3 - n         # match does not end ownership
        pending.release(slot)
        assert len(pending) == 2 - n
    assert pending.match(10, KILL, 1) == (None, ())


def test_slot_carries_handler_state(pending):
    slot = pending.claim(5, KILL, 9)
    slot.client, slot.client_seq, slot.extra, slot.core = 4, 77, int(Op.SPAWN), 3
    got, _ = pending.match(5, KILL, 9)
    assert (got.client, got.client_seq, got.extra, got.core) == (4, 77, Op.SPAWN, 3)


def test_len_and_has_room(pending):
    slots = claim_all(pending, range(8))
    assert len(pending) == 8 and not pending.has_room()
    pending.release(slots[0])
    assert len(pending) == 7 and pending.has_room()


@pytest.mark.parametrize("kind", ["replyq", "hashtable"])
def test_claim_past_capacity_raises(kind):
    p = make_pending(kind, 4)
    claim_all(p, range(4))
    with pytest.raises(OverflowError):
        p.claim(4, KILL, 1)
    assert len(p) == 4


def test_match_on_empty(pending):
    assert pending.match(0, KILL, 1) == (None, ())


def test_duplicate_reply_matches_nothing(pending):
    a, b = claim_all(pending, [1, 2])
    got, _ = pending.match(1, KILL, 1)
    pending.release(got)
    assert pending.match(1, KILL, 1) == (None, ())      # the same reply again
    assert pending.match(0, KILL, 1) == (None, ())      # older than anything pending
    assert len(pending) == 1
    answer_in_order(pending, [b])


def test_reply_never_issued_matches_nothing(pending):
    a, b = claim_all(pending, [100, 101])
    for seq in (102, 5000, 0x7FFFFFFF):
        assert pending.match(seq, KILL, 1) == (None, ())
    assert len(pending) == 2
    answer_in_order(pending, [a, b])


@pytest.mark.parametrize(("op", "dom"), [(SPAN, 1), (KILL, 2), (SPAWN, 7)])
@pytest.mark.parametrize("which", [0, 1])
def test_right_seq_wrong_op_or_dom_matches_nothing(pending, which, op, dom):
    slots = claim_all(pending, [20, 21], op=KILL, dom=1)
    assert pending.match(slots[which].seq, op, dom) == (None, ())
    assert len(pending) == 2
    answer_in_order(pending, slots)


def test_seq_wrap_around_in_order(pending):
    slots = claim_all(pending, WRAP)
    answer_in_order(pending, slots)
    assert len(pending) == 0
    # Late duplicates from before the wrap match nothing.
    for seq in WRAP:
        assert pending.match(seq, KILL, 1) == (None, ())


def test_drain_oldest_first(pending):
    slots = claim_all(pending, [3, 4, 5]) + [pending.claim(6, SPAN, 2)]
    drained = pending.drain()
    assert drained == slots
    assert all(a is b for a, b in zip(drained, slots))
    assert len(pending) == 4                  # drain hands back, the caller releases
    for slot in drained:
        pending.release(slot)
    assert len(pending) == 0 and pending.drain() == []


@pytest.mark.parametrize("kind", ["replyq", "hashtable"])
def test_drain_oldest_first_across_wrap(kind):
    p = make_pending(kind, 8)
    slots = claim_all(p, WRAP)
    assert [s.seq for s in p.drain()] == WRAP
    assert all(a is b for a, b in zip(p.drain(), slots))


# ---- seq_before --------------------------------------------------------------

def test_seq_before_examples():
    assert seq_before(1, 2) and not seq_before(2, 1)
    assert not seq_before(7, 7)
    assert seq_before(0xFFFFFFFF, 0) and not seq_before(0, 0xFFFFFFFF)
    assert seq_before(0xFFFFFFFE, 1) and not seq_before(1, 0xFFFFFFFE)
    # Exactly half the space apart: neither is before the other.
    assert not seq_before(0, 0x80000000) and not seq_before(0x80000000, 0)


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 2**31 - 1))
def test_seq_before_is_serial_order(a, d):
    b = (a + d) & 0xFFFFFFFF
    assert seq_before(a, b)
    assert not seq_before(b, a)
    assert not seq_before(a, a)


# ---- ReplyQueue only ---------------------------------------------------------

@pytest.mark.parametrize("cap", [0, -1, -4, 3, 6, 1000, 1023])
def test_replyq_capacity_must_be_power_of_two(cap):
    with pytest.raises(ValueError, match=f"power of two, got {cap}"):
        ReplyQueue(cap)
    with pytest.raises(ValueError):
        make_pending("replyq", cap)


@pytest.mark.parametrize("cap", [1, 2, 64, 1024])
def test_replyq_power_of_two_capacity(cap):
    q = ReplyQueue(cap)
    assert q.capacity == cap
    claim_all(q, range(cap))
    assert not q.has_room()
    with pytest.raises(OverflowError):
        q.claim(cap, KILL, 1)


def test_replyq_reuses_slots_without_allocating():
    q = ReplyQueue(4)
    seen = []
    for seq in range(100):
        slot = q.claim(seq, KILL, seq % 3)
        slot.client, slot.extra = seq + 1, seq
        seen.append(slot)
        got, _ = q.match(seq, KILL, seq % 3)
        assert got is slot
        q.release(slot)
        # Cleared on release: no reference to the client outlives the request.
        assert (slot.seq, slot.op, slot.dom, slot.core) == (-1, 0, 0, 0)
        assert (slot.client, slot.client_seq, slot.extra) == (0, 0, 0)
    assert len({id(s) for s in seen}) == 4
    assert all(seen[k] is seen[k % 4] for k in range(100))


def test_replyq_younger_reply_reports_lost_ones():
    q = ReplyQueue(8)
    s10, s11, s12, s13 = claim_all(q, [10, 11, 12, 13])
    got, lost = q.match(12, KILL, 1)
    assert got is s12
    assert list(lost) == [s10, s11] and all(a is b for a, b in zip(lost, [s10, s11]))
    assert len(q) == 4                        # reporting does not release
    for slot in (*lost, got):
        q.release(slot)
    assert len(q) == 1
    # The lost ones' replies, arriving late, are stale now.
    assert q.match(10, KILL, 1) == (None, ())
    assert q.match(11, KILL, 1) == (None, ())
    answer_in_order(q, [s13])


def test_replyq_younger_reply_with_wrong_op_matches_nothing():
    q = ReplyQueue(8)
    slots = claim_all(q, [1, 2, 3])
    assert q.match(3, SPAN, 1) == (None, ())
    assert q.match(3, KILL, 2) == (None, ())
    answer_in_order(q, slots)


def test_replyq_lost_replies_across_wrap():
    q = ReplyQueue(8)
    fe, ff, zero, one = claim_all(q, WRAP)
    got, lost = q.match(0, KILL, 1)
    assert got is zero and list(lost) == [fe, ff]
    for slot in (fe, ff, zero):
        q.release(slot)
    assert q.match(0xFFFFFFFF, KILL, 1) == (None, ())     # stale, from before the wrap
    assert q.match(0, KILL, 1) == (None, ())
    assert q.match(2, KILL, 1) == (None, ())              # not issued yet
    answer_in_order(q, [one])


def test_replyq_release_out_of_order_raises():
    q = ReplyQueue(8)
    a, b, c = claim_all(q, [1, 2, 3])
    with pytest.raises(AssertionError, match="out of order"):
        q.release(b)
    with pytest.raises(AssertionError):
        q.release(PendingSlot())                          # not one of ours
    # A refused release changes nothing.
    assert len(q) == 3 and b.seq == 2
    answer_in_order(q, [a, b, c])


@pytest.mark.parametrize("cap", [1, 4])
def test_replyq_release_when_empty_raises(cap):
    q = ReplyQueue(cap)
    slots = claim_all(q, range(cap))
    for slot in slots:
        q.release(slot)
    with pytest.raises(AssertionError):
        q.release(slots[0])                               # a double release
    assert len(q) == 0


def test_replyq_slot_in_use_is_not_given_away():
    """The handler runs between match and release; a request it sends meanwhile
    must not be handed the slot it is still reading."""
    q = ReplyQueue(2)
    a = q.claim(1, KILL, 1)
    got, _ = q.match(1, KILL, 1)
    b = q.claim(2, SPAN, 1)                                # sent by the handler
    assert b is not got and (got.seq, got.op) == (1, KILL)
    assert not q.has_room()
    with pytest.raises(OverflowError):
        q.claim(3, SPAN, 1)
    q.release(a)
    answer_in_order(q, [b])


def test_replyq_drain_after_wrap_of_the_ring():
    q = ReplyQueue(4)
    answer_in_order(q, claim_all(q, range(3)))            # head/tail now mid-ring
    slots = claim_all(q, [3, 4, 5, 6])
    assert q.drain() == slots and all(a is b for a, b in zip(q.drain(), slots))


# ---- HashTable only -----------------------------------------------------------

def test_hashtable_chains_same_key_and_matches_by_seq():
    h = HashTable(16)
    k1, k2, k3 = claim_all(h, [1, 2, 3], op=KILL, dom=5)   # concurrent killers
    sp = h.claim(4, SPAN, 5)
    other = h.claim(5, KILL, 6)
    assert len(h) == 5
    # Found by key, then seq; order does not matter to the hash table.
    for seq, op, dom, slot in ((3, KILL, 5, k3), (1, KILL, 5, k1), (4, SPAN, 5, sp),
                               (5, KILL, 6, other), (2, KILL, 5, k2)):
        got, lost = h.match(seq, op, dom)
        assert got is slot and lost == ()
    assert h.match(4, KILL, 5) == (None, ())               # seq of another key
    h.release(k2)                                          # out of order is fine here
    assert h.match(2, KILL, 5) == (None, ())
    assert h.match(1, KILL, 5)[0] is k1 and h.match(3, KILL, 5)[0] is k3
    for slot in (k1, k3, sp, other):
        h.release(slot)
    assert len(h) == 0 and h.drain() == []


def test_hashtable_allocates_fresh_slots():
    h = HashTable(4)
    a = h.claim(1, KILL, 1)
    h.release(a)
    assert h.claim(2, KILL, 1) is not a


# ---- both strategies agree -------------------------------------------------------

actions = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), st.sampled_from([KILL, SPAN, SPAWN]), st.integers(0, 2)),
        st.tuples(st.just("reply"), st.none(), st.none()),
        st.tuples(st.just("dup"), st.none(), st.none()),
    ),
    max_size=60,
)


@FAST
@given(st.sampled_from([0, 1000, 0x7FFFFFF0, 0xFFFFFFF0]) | st.integers(0, 2**32 - 1), actions)
def test_strategies_agree_on_in_order_replies(start, steps):
    rq, ht = make_pending("replyq", 8), make_pending("hashtable", 8)
    model: deque[tuple[int, int, int]] = deque()
    last_answered = None
    seq = start
    for what, op, dom in steps:
        if what == "claim":
            assert rq.has_room() == ht.has_room() == (len(model) < 8)
            if not rq.has_room():
                continue
            a, b = rq.claim(seq, op, dom), ht.claim(seq, op, dom)
            assert (a.seq, a.op, a.dom) == (b.seq, b.op, b.dom) == (seq, op, dom)
            model.append((seq, op, dom))
            seq = (seq + 1) & 0xFFFFFFFF
        elif what == "reply":
            key = model[0] if model else (seq, KILL, 0)
            (a, lost_a), (b, lost_b) = rq.match(*key), ht.match(*key)
            assert not lost_a and not lost_b
            if not model:
                assert a is None and b is None
                continue
            assert (a.seq, a.op, a.dom) == (b.seq, b.op, b.dom) == key
            rq.release(a)
            ht.release(b)
            last_answered = model.popleft()
        elif last_answered is not None:             # a duplicate of the last reply
            assert rq.match(*last_answered) == ht.match(*last_answered) == (None, ())
        assert len(rq) == len(ht) == len(model)
    assert [(s.seq, s.op, s.dom) for s in rq.drain()] == list(model)
    assert sorted((s.seq, s.op, s.dom) for s in ht.drain()) == sorted(model)
