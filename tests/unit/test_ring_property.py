"""Property test of ringbuf.Ring against a bounded deque.

A hypothesis state machine drives a creator (producer) and an attacher
(consumer) of one small ring -- capacity 2..16, counters starting anywhere,
often just below 2**64 -- with random single and batch operations, and
checks every result against ``collections.deque`` with the same capacity:
what comes out, how many fit, len(), and the raw counters in the header.

Batch rows come out as whole slots, whose bytes past a message's length
are whatever the slot held before; the model compares only the message's
own bytes there. Single pops must return exactly the message.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

import ringbuf
from ringbuf import Empty, Full, MessageTooLarge, Ring, slot_dtype

U64 = 2**64

# Counters start anywhere, but mostly where they will cross 2**64 within
# the few dozen messages one run pushes.
START = st.one_of(
    st.integers(U64 - 64, U64 - 1),
    st.integers(0, U64 - 1),
    st.sampled_from([0, U64 - 1, U64 - 2, U64 - 16]),
)
RECORD = np.dtype([("a", "<u4"), ("b", "<u2"), ("c", "S10")])   # 16 bytes


class RingVsDeque(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.prod = self.cons = None
        self.model: deque[bytes] = deque()

    @initialize(cap_log=st.integers(1, 4), slot=st.sampled_from([64, 128]), start=START)
    def open_ring(self, cap_log, slot, start):
        self.cap, self.slot, self.start = 2**cap_log, slot, start
        self.pushed = self.popped = 0
        self.name = ringbuf.unique_name("procmgr-test")
        self.prod = Ring.create(self.name, self.cap, slot, _start_index=start)
        self.cons = Ring.attach(self.name)

    def teardown(self):
        for ring in (self.cons, self.prod):
            if ring is not None:
                ring.close()
        if self.prod is not None:
            self.prod.unlink()

    # ---- model helpers ----

    def room(self) -> int:
        return self.cap - len(self.model)

    def add(self, msgs) -> None:
        self.model.extend(msgs)
        self.pushed += len(msgs)

    def take(self) -> bytes:
        self.popped += 1
        return self.model.popleft()

    # ---- single messages ----

    @rule(data=st.data())
    def try_push(self, data):
        msg = data.draw(st.binary(max_size=self.slot), label="msg")
        ok = self.prod.try_push(msg)
        assert ok == (self.room() > 0)
        if ok:
            self.add([msg])

    @rule(data=st.data())
    def push_no_wait(self, data):
        msg = data.draw(st.binary(min_size=self.slot - 2, max_size=self.slot), label="msg")
        if self.room() == 0:
            try:
                self.prod.push(msg, timeout=0)
            except Full:
                return
            raise AssertionError("push(timeout=0) on a full ring did not raise Full")
        self.prod.push(msg, timeout=0)
        self.add([msg])

    @rule(extra=st.integers(1, 64))
    def push_too_large(self, extra):
        try:
            self.prod.try_push(b"\x5a" * (self.slot + extra))
        except MessageTooLarge:
            return
        raise AssertionError("an oversized message was accepted")

    @rule()
    def try_pop(self):
        got = self.cons.try_pop()
        if self.model:
            assert got == self.take()
        else:
            assert got is None

    @rule()
    def pop_no_wait(self):
        if not self.model:
            try:
                self.cons.pop(timeout=0)
            except Empty:
                return
            raise AssertionError("pop(timeout=0) on an empty ring did not raise Empty")
        assert self.cons.pop(timeout=0) == self.take()

    # ---- batches ----

    @rule(k=st.integers(0, 20), kind=st.sampled_from(["slot", "rows", "record"]),
          width=st.integers(1, 128), seed=st.integers(0, 2**32 - 1))
    def push_many(self, k, kind, width, seed):
        rng = np.random.default_rng(seed)
        if kind == "slot":
            raw = rng.integers(0, 256, (k, self.slot), dtype=np.uint8)
            arr = raw.view(slot_dtype(self.slot)).reshape(k)
        elif kind == "rows":
            width = min(width, self.slot)
            arr = rng.integers(0, 256, (k, width), dtype=np.uint8)
        else:
            arr = np.frombuffer(rng.integers(0, 256, k * RECORD.itemsize, dtype=np.uint8).tobytes(),
                                dtype=RECORD)
        n = self.prod.push_many(arr)
        assert n == min(k, self.room())
        self.add([arr[i].tobytes() for i in range(n)])

    @rule(k=st.integers(0, 20))
    def pop_many(self, k):
        out = self.cons.pop_many(k)
        assert out.dtype == slot_dtype(self.slot)
        assert len(out) == min(k, len(self.model))
        for row in out:
            want = self.take()
            assert row.tobytes()[:len(want)] == want

    @rule(k=st.integers(1, 20), width=st.integers(1, 128))
    def pop_many_into(self, k, width):
        width = min(width, self.slot)
        out = np.full((k, width), 0xC3, np.uint8)
        n = self.cons.pop_many_into(out)
        assert n == min(k, len(self.model))
        for row in out[:n]:
            want = self.take()[:width]
            assert row[:len(want)].tobytes() == want
        assert (out[n:] == 0xC3).all(), "rows past the count were written"

    # ---- invariants ----

    @invariant()
    def lengths_and_counters_agree(self):
        if self.prod is None:
            return
        assert len(self.prod) == len(self.cons) == len(self.model) <= self.cap
        h = self.cons.header()
        assert int(h["prod_tail"]) == (self.start + self.pushed) % U64
        assert int(h["cons_head"]) == (self.start + self.popped) % U64


RingVsDeque.TestCase.settings = settings(
    max_examples=200, stateful_step_count=20, deadline=None, database=None,
)
TestRingVsDeque = RingVsDeque.TestCase
