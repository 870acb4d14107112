"""Unit tests of ringbuf.Ring in one process.

The creator and an attacher in the same process are the two parties of a
ring (same segment, two mappings, two handles), so the whole contract short
of real concurrency is tested here: exact round trips, the full and empty
edges, counters wrapping past 2**64, the numpy batch API, every error that
create/attach can raise, the close protocol, and the header layout as numpy
and cffi see it.

Every segment is named by the ``shm_name`` fixture (prefix "procmgr-test"),
is closed, and is unlinked; every wait has an explicit timeout.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import struct
import threading
import time
import types

import numpy as np
import posix_ipc
import pytest

import ringbuf
from ringbuf import (
    HEADER_DTYPE,
    HEADER_SIZE,
    LINE,
    Closed,
    Empty,
    Full,
    MessageTooLarge,
    PeerDied,
    Ring,
    RingError,
    RingException,
    segment_size,
    slot_dtype,
)
from ringbuf._cffi_ring import ffi, lib

U64 = 2**64
WAIT = 0.05                 # the timeout of every "waits, then gives up" test
SLACK = 0.005               # clock granularity between Python and C
LATE = 2.0                  # generous bound: a give-up must not take this long


# ---- helpers ----------------------------------------------------------------

@contextlib.contextmanager
def ring_pair(name: str, capacity: int = 8, slot_size: int = LINE, **kw):
    """(creator, attacher) of a fresh ring; both closed and the name unlinked."""
    creator = Ring.create(name, capacity, slot_size, **kw)
    try:
        attacher = Ring.attach(name)
        try:
            yield creator, attacher
        finally:
            attacher.close()
    finally:
        creator.close()
        creator.unlink()


def dev_shm(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


def pattern(n: int, salt: int = 0) -> bytes:
    """n bytes that differ from every other (n, salt) pattern's."""
    return bytes((i * 7 + n * 13 + salt * 31 + 1) % 256 for i in range(n))


def rows_u8(n: int, width: int, salt: int = 0) -> np.ndarray:
    """An (n, width) uint8 array, every row distinct."""
    return np.frombuffer(b"".join(pattern(width, salt + k) for k in range(n)),
                         dtype=np.uint8).reshape(n, width).copy()


def as_slots(raw: np.ndarray, slot_size: int) -> np.ndarray:
    """Rows of slot_dtype viewed as an (n, slot_size) uint8 array."""
    return raw.view(np.uint8).reshape(len(raw), slot_size)


def counters(ring: Ring) -> tuple[int, int]:
    h = ring.header()
    return int(h["prod_tail"]), int(h["cons_head"])


def header_offset(*path: str) -> int:
    return ffi.offsetof("struct rb_header", *path)


@contextlib.contextmanager
def raw_segment(name: str):
    """A read-write mmap of an existing segment, for poking at its bytes."""
    shm = posix_ipc.SharedMemory(name)
    try:
        mm = mmap.mmap(shm.fd, shm.size)
    finally:
        shm.close_fd()
    try:
        yield mm
    finally:
        mm.close()


def make_segment(name: str, data: bytes) -> None:
    """A foreign segment holding exactly ``data``."""
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=len(data))
    try:
        with mmap.mmap(shm.fd, len(data)) as mm:
            mm[:] = data
    finally:
        shm.close_fd()


def timed(fn, *args, **kw):
    """(exception raised or result, seconds taken)."""
    t0 = time.monotonic()
    try:
        out = fn(*args, **kw)
    except Exception as e:          # noqa: BLE001 -- the caller inspects it
        out = e
    return out, time.monotonic() - t0


# ---- round trips ------------------------------------------------------------

@pytest.mark.parametrize("slot_size", [64, 128])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_round_trip_every_length(shm_name, slot_size, kind):
    with ring_pair(shm_name, 4, slot_size) as (prod, cons):
        assert prod.slot_size == cons.slot_size == slot_size
        backing = bytearray(3 + slot_size + 3)
        for n in range(slot_size + 1):
            want = pattern(n)
            if kind == "bytes":
                msg = want
            elif kind == "bytearray":
                msg = bytearray(want)
            else:
                # A view into the middle of a larger buffer: only its n bytes go.
                backing[:] = b"\xee" * len(backing)
                backing[3:3 + n] = want
                msg = memoryview(backing)[3:3 + n]
            prod.push(msg, timeout=1.0)
            assert len(prod) == len(cons) == 1
            got = cons.pop(timeout=1.0)
            assert type(got) is bytes
            assert got == want, n
            assert len(cons) == 0
            assert cons.try_pop() is None


def test_round_trip_of_a_full_ring_keeps_order(shm_name):
    with ring_pair(shm_name, 16, 128) as (prod, cons):
        msgs = [pattern(n * 8, n) for n in range(16)]
        for m in msgs:
            assert prod.try_push(m)
        assert [cons.try_pop() for _ in msgs] == msgs
        assert cons.try_pop() is None


def test_either_end_may_produce(shm_name):
    with ring_pair(shm_name, 4) as (creator, attacher):
        attacher.push(b"from the attacher", timeout=1.0)
        assert creator.pop(timeout=1.0) == b"from the attacher"
        creator.push(b"from the creator", timeout=1.0)
        assert attacher.pop(timeout=1.0) == b"from the creator"


def test_non_buffer_message_is_a_type_error(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        with pytest.raises(TypeError):
            prod.push("text is not bytes", timeout=0)
        with pytest.raises(TypeError):
            prod.try_push(12345)
        assert len(prod) == 0


@pytest.mark.parametrize("slot_size", [64, 128])
def test_message_one_byte_too_large(shm_name, slot_size):
    with ring_pair(shm_name, 4, slot_size) as (prod, cons):
        prod.push(b"keep", timeout=1.0)
        before = prod.header()
        too_big = pattern(slot_size + 1)
        for call in (lambda: prod.try_push(too_big),
                     lambda: prod.push(too_big),
                     lambda: prod.push(bytearray(too_big), timeout=0.01),
                     lambda: prod.push(b"x" * (1 << 20), timeout=0)):
            with pytest.raises(MessageTooLarge) as exc:
                call()
            assert isinstance(exc.value, ValueError)
            assert str(slot_size) in str(exc.value)
        after = prod.header()
        assert int(after["prod_tail"]) == int(before["prod_tail"])
        assert int(after["cons_head"]) == int(before["cons_head"])
        assert len(prod) == 1
        assert cons.try_pop() == b"keep"
        assert cons.try_pop() is None
        # The boundary itself fits.
        assert prod.try_push(too_big[:slot_size])
        assert cons.try_pop() == too_big[:slot_size]


# ---- full and empty edges ---------------------------------------------------

def test_full_edge(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        for k in range(4):
            assert len(prod) == k
            assert prod.try_push(bytes([k]))
            assert len(prod) == len(cons) == k + 1
        assert prod.try_push(b"no room") is False
        assert len(prod) == 4

        exc, took = timed(prod.push, b"no room", timeout=WAIT)
        assert isinstance(exc, Full), exc
        assert isinstance(exc, queue.Full) and isinstance(exc, RingException)
        assert WAIT - SLACK <= took < LATE
        with pytest.raises(queue.Full):
            prod.push(b"no room", timeout=0)
        assert len(prod) == 4

        # One pop makes exactly one slot of room.
        assert cons.try_pop() == b"\x00"
        assert len(prod) == 3
        assert prod.try_push(b"\x04")
        assert prod.try_push(b"\x05") is False
        assert [cons.try_pop() for _ in range(5)] == [b"\x01", b"\x02", b"\x03", b"\x04", None]


def test_empty_edge(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        assert len(cons) == 0
        assert cons.try_pop() is None

        exc, took = timed(cons.pop, timeout=WAIT)
        assert isinstance(exc, Empty), exc
        assert isinstance(exc, queue.Empty) and isinstance(exc, RingException)
        assert WAIT - SLACK <= took < LATE
        with pytest.raises(queue.Empty):
            cons.pop(timeout=0)

        got, took = timed(cons.pop_many, 4, timeout=WAIT)
        assert isinstance(got, np.ndarray) and len(got) == 0, got
        assert got.dtype == slot_dtype(LINE)
        assert WAIT - SLACK <= took < LATE
        out = np.zeros(4, slot_dtype(LINE))
        assert cons.pop_many_into(out) == 0
        assert len(cons) == 0

        prod.push(b"now", timeout=1.0)
        assert cons.pop(timeout=WAIT) == b"now"
        assert cons.try_pop() is None


def test_negative_timeout_is_rejected(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        with pytest.raises(ValueError):
            prod.push(b"x", timeout=-1)
        with pytest.raises(ValueError):
            cons.pop(timeout=-0.5)
        assert len(prod) == 0


def test_len_at_every_step(shm_name):
    cap = 8
    with ring_pair(shm_name, cap) as (prod, cons):
        model = 0
        # push 5, pop 2, push to full, pop 7, batch in 4, batch out 3, drain.
        steps = ["push"] * 5 + ["pop"] * 2 + ["push"] * 5 + ["pop"] * 7
        for step in steps:
            if step == "push":
                assert prod.try_push(b"m")
                model += 1
            else:
                assert cons.try_pop() == b"m"
                model -= 1
            assert len(prod) == len(cons) == model
            tail, head = counters(prod)
            assert tail - head == model
        assert prod.push_many(rows_u8(4, 8)) == 4
        assert len(cons) == 5
        assert len(cons.pop_many(3)) == 3
        assert len(prod) == 2
        assert len(cons.pop_many(10)) == 2
        assert len(prod) == len(cons) == 0


# ---- counters wrapping past 2**64 --------------------------------------------

@pytest.mark.parametrize("start", [U64 - 5, U64 - 1, U64 - 8, U64 - 3 * 8 + 1])
def test_counters_wrap_single_messages(shm_name, start):
    cap = 8
    with ring_pair(shm_name, cap, _start_index=start) as (prod, cons):
        assert counters(prod) == (start, start)
        prod.check()
        sent = popped = 0

        # Fill completely while the counters straddle 2**64.
        for _ in range(cap):
            assert prod.try_push(pattern(sent % 60, sent))
            sent += 1
            assert len(cons) == sent - popped
        assert prod.try_push(b"full") is False
        assert len(prod) == cap
        tail, head = counters(prod)
        assert tail == (start + cap) % U64 and head == start
        assert (tail - head) % U64 == cap
        prod.check()

        # Then run well past the wrap in uneven steps, checking FIFO order.
        for burst in [3, 1, 5, 8, 2, 7, 8, 4] * 3:
            for _ in range(burst):
                assert cons.try_pop() == pattern(popped % 60, popped)
                popped += 1
                assert len(prod) == sent - popped
            while prod.try_push(pattern(sent % 60, sent)):
                sent += 1
            assert len(cons) == cap
        while (msg := cons.try_pop()) is not None:
            assert msg == pattern(popped % 60, popped)
            popped += 1
        assert popped == sent > 4 * cap
        tail, head = counters(cons)
        assert tail == head == (start + sent) % U64
        assert tail < 1000, "the counters wrapped to small numbers"
        cons.check()


@pytest.mark.parametrize("start", [U64 - 5, U64 - 1, U64 - 16])
def test_counters_wrap_batches(shm_name, start):
    cap, slot = 16, 128
    with ring_pair(shm_name, cap, slot, _start_index=start) as (prod, cons):
        sent: list[bytes] = []
        got: list[bytes] = []
        salt = 0
        for k, width in enumerate([slot, 40, slot, 1, 64, slot, 100, slot] * 3):
            n = 3 + (k * 5) % 11
            rows = rows_u8(n, width, salt)
            salt += n
            pushed = prod.push_many(rows)
            assert pushed == min(n, cap - (len(sent) - len(got)))
            sent += [r.tobytes() for r in rows[:pushed]]
            assert len(prod) == len(sent) - len(got)
            # Drain some by pop_many (whole slots), some by pop_many_into.
            if k % 2:
                out = cons.pop_many(7)
                assert out.dtype == slot_dtype(slot)
                for row in as_slots(out, slot):
                    want = sent[len(got)]
                    assert row[:len(want)].tobytes() == want
                    got.append(want)
            else:
                buf = np.zeros((5, slot), np.uint8)
                m = cons.pop_many_into(buf)
                assert m == min(5, len(sent) - len(got))
                for row in buf[:m]:
                    want = sent[len(got)]
                    assert row[:len(want)].tobytes() == want
                    got.append(want)
            assert len(cons) == len(sent) - len(got)
        # Anything left comes out whole through the single-message path too.
        while (msg := cons.try_pop()) is not None:
            assert msg == sent[len(got)]
            got.append(msg)
        assert got == sent and len(sent) > 4 * cap
        tail, head = counters(prod)
        assert tail == head == (start + len(sent)) % U64
        assert tail < 1000
        prod.check()


# ---- batches ----------------------------------------------------------------

@pytest.mark.parametrize("slot", [64, 128])
def test_push_many_slot_dtype(shm_name, slot):
    with ring_pair(shm_name, 8, slot) as (prod, cons):
        rows = np.frombuffer(b"".join(pattern(slot, k) for k in range(6)),
                             dtype=slot_dtype(slot))
        assert rows.dtype.itemsize == slot
        assert prod.push_many(rows) == 6
        assert len(cons) == 6
        for k in range(6):
            assert cons.try_pop() == pattern(slot, k)   # whole slot, exact length
        assert cons.try_pop() is None


def test_push_many_2d_uint8_rows_keep_their_width(shm_name):
    with ring_pair(shm_name, 8, 128) as (prod, cons):
        rows = rows_u8(5, 10)
        assert prod.push_many(rows) == 5
        for r in rows:
            assert cons.try_pop() == r.tobytes()       # 10 bytes, not 128


def test_push_many_non_contiguous_rows(shm_name):
    with ring_pair(shm_name, 8, 64) as (prod, cons):
        wide = rows_u8(12, 100)
        view = wide[::2, 10:50]                        # neither row- nor column-contiguous
        assert not view.flags.c_contiguous
        assert prod.push_many(view) == 6
        for r in view:
            assert cons.try_pop() == r.tobytes()


RECORD = np.dtype([("seq", "<u8"), ("value", "<f8"), ("tag", "S4")])


def test_push_many_record_dtype_smaller_than_slot(shm_name):
    assert RECORD.itemsize < 64
    with ring_pair(shm_name, 8, 64) as (prod, cons):
        recs = np.zeros(6, RECORD)
        recs["seq"] = np.arange(100, 106)
        recs["value"] = np.linspace(-1.5, 2.5, 6)
        recs["tag"] = [b"a", b"bb", b"ccc", b"dddd", b"e", b""]
        assert prod.push_many(recs) == 6
        # A single pop sees exactly one record's bytes.
        assert cons.try_pop() == recs[0].tobytes()
        out = np.zeros(8, RECORD)
        assert cons.pop_many_into(out) == 5
        assert (out[:5] == recs[1:]).all()
        assert (out[5:] == np.zeros(3, RECORD)).all()  # rows past the count untouched
        assert len(cons) == 0


def test_push_many_partial_when_not_enough_room(shm_name):
    with ring_pair(shm_name, 8, 64) as (prod, cons):
        for k in range(3):
            assert prod.try_push(bytes([k]) * 3)
        rows = rows_u8(10, 64)
        assert prod.push_many(rows) == 5
        assert len(prod) == 8
        assert prod.push_many(rows[5:]) == 0           # full: default timeout 0
        assert len(prod) == 8
        for k in range(3):
            assert cons.try_pop() == bytes([k]) * 3
        for r in rows[:5]:
            assert cons.try_pop() == r.tobytes()
        assert cons.try_pop() is None


def test_push_many_of_nothing(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        assert prod.push_many(np.zeros(0, slot_dtype(LINE))) == 0
        assert prod.push_many(np.zeros((0, 8), np.uint8)) == 0
        assert len(cons) == 0


def test_pop_many_dtype_and_rows(shm_name):
    with ring_pair(shm_name, 16, 128) as (prod, cons):
        msgs = [pattern(128, k) for k in range(10)]
        for m in msgs:
            assert prod.try_push(m)
        out = cons.pop_many(4)
        assert out.dtype == slot_dtype(128) and out.shape == (4,)
        assert [r.tobytes() for r in out] == msgs[:4]
        out = cons.pop_many(100)                       # asks for more than there is
        assert out.shape == (6,)
        assert [r.tobytes() for r in out] == msgs[4:]
        assert cons.pop_many(3).shape == (0,)
        assert cons.pop_many(0).shape == (0,)


def test_pop_many_into_caller_array(shm_name):
    slot = 64
    with ring_pair(shm_name, 8, slot) as (prod, cons):
        rows = rows_u8(6, slot)
        assert prod.push_many(rows) == 6
        out = np.frombuffer(b"\xab" * (10 * slot), dtype=slot_dtype(slot)).copy()
        assert cons.pop_many_into(out) == 6
        assert (as_slots(out[:6], slot) == rows).all()
        assert (as_slots(out[6:], slot) == 0xAB).all()  # untouched
        assert len(cons) == 0

        # A 2-D uint8 out narrower than the slot gets each slot's first bytes.
        assert prod.push_many(rows[:3]) == 3
        narrow = np.zeros((2, 16), np.uint8)
        assert cons.pop_many_into(narrow) == 2
        assert (narrow == rows[:2, :16]).all()
        assert len(cons) == 1
        assert cons.try_pop() == rows[2].tobytes()


@pytest.mark.parametrize("width", [64, 24])
def test_batches_across_the_ring_index_wrap(shm_name, width):
    # Whole-slot rows take the two-memcpy path, narrower rows the per-row loop.
    cap = 8
    with ring_pair(shm_name, cap, 64) as (prod, cons):
        for k in range(5):                              # next slot index is 5
            assert prod.try_push(b"x")
            assert cons.try_pop() == b"x"
        rows = rows_u8(7, width)                        # slots 5,6,7,0,1,2,3
        assert prod.push_many(rows) == 7
        tail, head = counters(prod)
        assert (head % cap, tail % cap) == (5, 4)
        if width == 64:
            out = cons.pop_many(7)
            assert (as_slots(out, 64) == rows).all()
        else:
            out = np.zeros((7, width), np.uint8)
            assert cons.pop_many_into(out) == 7
            assert (out == rows).all()
        # And records out across the wrap (slots 4..7,0..2 now).
        recs = np.zeros(7, RECORD)
        recs["seq"] = np.arange(7) + 1000
        assert prod.push_many(recs) == 7
        back = np.zeros(7, RECORD)
        assert cons.pop_many_into(back) == 3 + 4 and (back == recs).all()


def test_batches_with_start_index_at_the_ring_end(shm_name):
    cap = 8
    with ring_pair(shm_name, cap, 64, _start_index=cap - 2) as (prod, cons):
        rows = rows_u8(cap, 64)
        assert prod.push_many(rows) == cap
        out = np.zeros(cap, slot_dtype(64))
        assert cons.pop_many_into(out) == cap
        assert (as_slots(out, 64) == rows).all()


def test_push_many_timeout_on_full_ring(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        assert prod.push_many(rows_u8(4, 64)) == 4
        pushed, took = timed(prod.push_many, rows_u8(2, 64), timeout=WAIT)
        assert pushed == 0
        assert WAIT - SLACK <= took < LATE
        assert len(prod) == 4
        # Not full: a timeout does not delay a batch that fits.
        cons.pop_many(1)
        pushed, took = timed(prod.push_many, rows_u8(2, 64), timeout=5.0)
        assert pushed == 1 and took < LATE


def test_pop_many_into_timeout_on_empty_ring(shm_name):
    with ring_pair(shm_name, 4) as (_prod, cons):
        out = np.zeros(4, slot_dtype(LINE))
        got, took = timed(cons.pop_many_into, out, timeout=WAIT)
        assert got == 0
        assert WAIT - SLACK <= took < LATE


def test_batch_bad_arguments(shm_name):
    with ring_pair(shm_name, 8, 64) as (prod, cons):
        assert prod.try_push(b"keep")
        for bad in (np.zeros((2, 2, 2), np.uint8),          # 3-D
                    np.zeros((1, 2, 64), np.uint8),         # 3-D, rows would fit
                    np.zeros((2, 8), np.uint16)):           # 2-D but not uint8 rows
            with pytest.raises(ValueError):
                prod.push_many(bad)
        with pytest.raises(MessageTooLarge) as exc:       # rows bigger than a slot
            prod.push_many(np.zeros((2, 65), np.uint8))
        assert isinstance(exc.value, ValueError)
        with pytest.raises(ValueError):
            prod.push_many(np.zeros(2, slot_dtype(128)))

        for bad_out in (np.zeros(8, slot_dtype(64))[::2],      # not contiguous
                        np.zeros((4, 128), np.uint8)[:, :64],  # not contiguous
                        np.zeros((2, 65), np.uint8),           # rows > slot
                        np.zeros(2, slot_dtype(128)),          # items > slot
                        np.zeros((2, 2, 2), np.uint8)):        # 3-D
            with pytest.raises(ValueError):
                cons.pop_many_into(bad_out)
        assert len(prod) == 1
        assert cons.try_pop() == b"keep"


# ---- create and attach errors ---------------------------------------------------

@pytest.mark.parametrize("capacity", [0, 1, 3, 6, 1000, -8])
def test_create_bad_capacity(shm_name, capacity):
    with pytest.raises(ValueError, match="capacity") as exc:
        Ring.create(shm_name, capacity)
    assert str(capacity) in str(exc.value)
    assert not os.path.exists(dev_shm(shm_name))
    with pytest.raises(ValueError, match="capacity"):
        segment_size(capacity)


@pytest.mark.parametrize("slot_size", [0, 63, 100, 65, -64])
def test_create_bad_slot_size(shm_name, slot_size):
    with pytest.raises(ValueError, match="slot_size") as exc:
        Ring.create(shm_name, 8, slot_size)
    assert str(slot_size) in str(exc.value)
    assert not os.path.exists(dev_shm(shm_name))
    with pytest.raises(ValueError, match="slot_size"):
        slot_dtype(slot_size)


def test_create_slot_size_above_the_maximum(shm_name):
    too_big = lib.RB_MAX_SLOT_SIZE + LINE
    with pytest.raises(ValueError, match="at most"):
        Ring.create(shm_name, 2, too_big)
    assert not os.path.exists(dev_shm(shm_name))


@pytest.mark.parametrize("capacity,slot", [(2, 64), (8, 64), (16, 128), (32, 192), (1024, 64)])
def test_segment_size_formula(capacity, slot):
    lens = -(-capacity * 4 // LINE) * LINE
    assert segment_size(capacity, slot) == HEADER_SIZE + lens + capacity * slot


def test_create_existing_name(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        assert prod.try_push(b"still here")
        with pytest.raises(RingError, match="already exists"):
            Ring.create(shm_name, 4)
        with pytest.raises(RingError, match="already exists"):
            Ring.create(shm_name, 64, 128)             # another geometry too
        assert cons.try_pop() == b"still here"         # the existing ring untouched
        assert prod.header()["capacity"] == 4


def test_create_name_without_leading_slash(shm_name):
    bare = shm_name.lstrip("/")
    with Ring.create(bare, 2) as r:
        assert r.name == shm_name
        with Ring.attach(bare) as a:
            assert r.try_push(b"ok") and a.try_pop() == b"ok"
    assert not os.path.exists(dev_shm(shm_name))


def test_attach_missing_name(shm_name):
    with pytest.raises(RingError, match="no ring") as exc:
        Ring.attach(shm_name)
    assert shm_name in str(exc.value)


def test_attach_segment_that_is_not_a_ring(shm_name):
    make_segment(shm_name, b"not a ring! " * 400)
    with pytest.raises(RingError, match="magic"):
        Ring.attach(shm_name)


def test_attach_segment_smaller_than_a_header(shm_name):
    make_segment(shm_name, b"\0" * 100)
    with pytest.raises(RingError, match="smaller"):
        Ring.attach(shm_name)


def test_attach_segment_smaller_than_its_layout(shm_name):
    # A valid header (copied from a real ring) in a segment too short for
    # the slots it promises.
    other = shm_name + "-back"
    with Ring.create(other, 8, 64) as real:
        with raw_segment(other) as mm:
            head = bytes(mm[:HEADER_SIZE + 64])
        assert real.header()["segment_size"] > len(head)
    make_segment(shm_name, head)
    with pytest.raises(RingError, match="smaller"):
        Ring.attach(shm_name)


def test_attach_wrong_version(shm_name):
    with Ring.create(shm_name, 4) as r:
        with raw_segment(shm_name) as mm:
            struct.pack_into("<I", mm, header_offset("geo", "version"), lib.RB_VERSION + 1)
        with pytest.raises(RingError, match="version"):
            Ring.attach(shm_name)
        with pytest.raises(RingError, match="version"):
            r.check()


def test_attach_bad_geometry(shm_name):
    with Ring.create(shm_name, 4) as r:
        with raw_segment(shm_name) as mm:
            struct.pack_into("<I", mm, header_offset("geo", "slot_size"), 100)
        with pytest.raises(RingError, match="geometry"):
            Ring.attach(shm_name)
        with pytest.raises(RingError, match="geometry"):
            r.check()


def test_corrupt_indices(shm_name):
    cap = 4
    with ring_pair(shm_name, cap, _start_index=U64 - 2) as (prod, cons):
        prod.check()
        assert prod.try_push(b"a")
        tail, head = counters(prod)
        with raw_segment(shm_name) as mm:
            struct.pack_into("<Q", mm, header_offset("prod_tail"), (head + cap + 1) % U64)
        for ring in (prod, cons):
            with pytest.raises(RingError, match="corrupt"):
                ring.check()
        with pytest.raises(RingError, match="corrupt"):
            Ring.attach(shm_name)
        assert len(cons) == cap                         # reported, but clamped
        # Exactly capacity is still sane.
        with raw_segment(shm_name) as mm:
            struct.pack_into("<Q", mm, header_offset("prod_tail"), (head + cap) % U64)
        prod.check()
        with raw_segment(shm_name) as mm:
            struct.pack_into("<Q", mm, header_offset("prod_tail"), tail)
        prod.check()
        assert cons.try_pop() == b"a"


def test_a_lying_peer_index_makes_the_ring_corrupt_for_good(shm_name):
    """Each side keeps its own index and checks the peer's as it loads it
    (_ring.h, "Trust"): a prod_tail past capacity, or behind the head, or a
    cons_head ahead of the tail, is refused -- and stays refused once the
    word is put right again: the peer broke the ring."""
    cap = 8
    for word, lie in (("prod_tail", lambda t, h: h + (1 << 40)),
                      ("prod_tail", lambda t, h: h - 1),
                      ("cons_head", lambda t, h: t + 100)):
        with ring_pair(shm_name, cap) as (prod, cons):
            prod.push(b"x")
            tail, head = counters(prod)
            with raw_segment(shm_name) as mm:
                struct.pack_into("<Q", mm, header_offset(word), lie(tail, head) % U64)
            victim = cons if word == "prod_tail" else prod
            if victim is cons:
                with pytest.raises(RingError, match="corrupt"):
                    cons.try_pop()
            else:
                for _ in range(cap - 1):             # room it saw before is good
                    prod.try_push(b"y")
                with pytest.raises(RingError, match="corrupt"):
                    prod.try_push(b"z")
            assert victim.corrupt
            with raw_segment(shm_name) as mm:        # put right: still refused
                struct.pack_into("<Q", mm, header_offset(word), tail if word == "prod_tail" else head)
            with pytest.raises(RingError, match="corrupt"):
                victim.try_pop() if victim is cons else victim.try_push(b"z")
            with pytest.raises(RingError, match="corrupt"):   # a waiter wakes to it
                victim.pop(timeout=1) if victim is cons else victim.push(b"z", timeout=1)


def test_its_own_index_in_the_segment_is_never_read_back(shm_name):
    """The consumer's cons_head rewritten by the producer (or anyone) does
    not move the consumer: it reads on from where it was, in order."""
    with ring_pair(shm_name, 8) as (prod, cons):
        for m in (b"a", b"b", b"c"):
            prod.push(m)
        assert cons.try_pop() == b"a"
        with raw_segment(shm_name) as mm:
            struct.pack_into("<Q", mm, header_offset("cons_head"), 0)
        assert [cons.try_pop(), cons.try_pop(), cons.try_pop()] == [b"b", b"c", None]
        assert not cons.corrupt


def test_failed_attach_leaves_nothing_behind(shm_name):
    """A refused attach unmaps what it mapped: the segment can be unlinked and
    recreated, and no exception surfaces later from a finaliser."""
    import gc

    make_segment(shm_name, b"\xff" * 4096)
    for _ in range(3):
        with pytest.raises(RingError):
            Ring.attach(shm_name)
    gc.collect()
    posix_ipc.unlink_shared_memory(shm_name)
    with Ring.create(shm_name, 2) as r:
        r.check()


def test_corrupt_message_length_is_refused(shm_name):
    """A lens[] entry larger than a slot (a crashed or hostile producer) must
    not make the consumer read past the slot; the ring is corrupt from then
    on, even once the word is put right (_ring.h, "Trust")."""
    with ring_pair(shm_name, 4) as (prod, cons):
        assert prod.try_push(b"abc")
        lens_at = int(prod.header()["lens_offset"])
        with raw_segment(shm_name) as mm:
            struct.pack_into("<I", mm, lens_at, LINE + 1)
        with pytest.raises(RingError):
            cons.try_pop()
        with pytest.raises(RingError):
            cons.pop(timeout=0.01)
        assert len(cons) == 1                          # nothing consumed
        with raw_segment(shm_name) as mm:
            struct.pack_into("<I", mm, lens_at, 3)
        with pytest.raises(RingError, match="corrupt"):
            cons.try_pop()


def _mmap_fails(*_args, **_kw):
    raise OSError(12, "Cannot allocate memory")


@pytest.mark.parametrize("how", ["mmap fails", "bad start index"])
def test_failed_create_removes_the_segment(shm_name, monkeypatch, how):
    if how == "mmap fails":
        # What a huge ring (e.g. capacity 2**33 x 1 MiB slots) hits for real.
        monkeypatch.setattr(ringbuf.ring, "mmap", types.SimpleNamespace(mmap=_mmap_fails))
        with pytest.raises(OSError):
            Ring.create(shm_name, 4)
    else:
        with pytest.raises((OverflowError, ValueError)):
            Ring.create(shm_name, 4, _start_index=-1)
    assert not os.path.exists(dev_shm(shm_name))


def test_push_many_refuses_object_arrays(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        try:
            with pytest.raises((TypeError, ValueError)):
                prod.push_many(np.array([b"a", b"b"], dtype=object))
        finally:
            got = cons.pop_many(4)
        assert len(got) == 0, "pointer bytes reached the consumer"


def test_large_timeout_means_wait_long(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        prod.push(b"x", timeout=1e10)
        assert cons.wait_data(timeout=1e10)
        assert cons.pop(timeout=1e10) == b"x"


def test_try_push_all(shm_name):
    with ring_pair(shm_name, 4, 64) as (prod, cons):
        three = pattern(3 * 64)
        assert prod.try_push(b"first")
        assert prod.try_push_all(three)
        assert len(prod) == 4
        assert prod.try_push_all(pattern(2 * 64)) is False    # all or nothing
        assert prod.try_push_all(pattern(64)) is False
        assert len(prod) == 4
        for bad in (b"", pattern(65), pattern(100)):
            with pytest.raises(ValueError):
                prod.try_push_all(bad)
        assert cons.try_pop() == b"first"
        assert [cons.try_pop() for _ in range(3)] == [three[k * 64:(k + 1) * 64] for k in range(3)]


# ---- close, unlink, segment ------------------------------------------------------

def test_closed_handle_raises_closed_saying_this_process(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        assert prod.try_push(b"x")
        cons.close()
        assert cons.closed and not prod.closed
        calls = {
            "push": lambda: cons.push(b"y", timeout=0.01),
            "try_push": lambda: cons.try_push(b"y"),
            "pop": lambda: cons.pop(timeout=0.01),
            "try_pop": cons.try_pop,
            "push_many": lambda: cons.push_many(rows_u8(1, 8)),
            "pop_many": lambda: cons.pop_many(2),
            "pop_many_into": lambda: cons.pop_many_into(np.zeros(2, slot_dtype(LINE))),
            "len": lambda: len(cons),
            "header": cons.header,
            "check": cons.check,
            "peer_alive": cons.peer_alive,
            "wait_data": lambda: cons.wait_data(timeout=0.01),
            "wait_space": lambda: cons.wait_space(timeout=0.01),
        }
        for what, call in calls.items():
            with pytest.raises(Closed, match="this process") as exc:
                call()
            assert not isinstance(exc.value, PeerDied), what
        assert "closed" in repr(cons)


def test_peer_close_stops_the_producer(shm_name):
    with ring_pair(shm_name, 4) as (creator, attacher):
        assert attacher.try_push(b"before")
        creator.close()                                 # the consumer goes away
        for call in (lambda: attacher.try_push(b"after"),
                     lambda: attacher.push(b"after", timeout=1.0),
                     lambda: attacher.push_many(rows_u8(2, 8))):
            exc, took = timed(call)
            assert isinstance(exc, Closed) and not isinstance(exc, PeerDied), exc
            assert "peer" in str(exc) and took < LATE
        assert len(attacher) == 1


def test_peer_close_while_full_wakes_a_timed_push(shm_name):
    with ring_pair(shm_name, 2) as (creator, attacher):
        assert attacher.try_push(b"1") and attacher.try_push(b"2")
        creator.close()
        exc, took = timed(attacher.push, b"3", timeout=5.0)
        assert isinstance(exc, Closed) and took < LATE


@pytest.mark.parametrize("producer_is_creator", [True, False])
def test_consumer_drains_then_sees_closed(shm_name, producer_is_creator):
    with ring_pair(shm_name, 8) as (creator, attacher):
        prod, cons = (creator, attacher) if producer_is_creator else (attacher, creator)
        msgs = [pattern(10, k) for k in range(5)]
        for m in msgs:
            assert prod.try_push(m)
        prod.close()
        assert cons.pop(timeout=1.0) == msgs[0]
        assert cons.try_pop() == msgs[1]
        out = cons.pop_many(2)
        assert [r.tobytes()[:10] for r in out] == msgs[2:4]
        small = np.zeros((4, 10), np.uint8)
        assert cons.pop_many_into(small) == 1 and small[0].tobytes() == msgs[4]
        assert len(cons) == 0
        for call in (cons.try_pop,
                     lambda: cons.pop(timeout=5.0),
                     lambda: cons.pop_many(4, timeout=5.0),
                     lambda: cons.wait_data(timeout=5.0)):
            exc, took = timed(call)
            assert isinstance(exc, Closed), exc
            assert "peer" in str(exc) and took < LATE


def test_close_is_idempotent(shm_name):
    r = Ring.create(shm_name, 4)
    try:
        a = Ring.attach(shm_name)
        a.close()
        a.close()
        assert a.closed
        r.close()
        r.close()
        assert r.closed
    finally:
        r.unlink()


def test_with_block_of_the_creator_unlinks(shm_name):
    path = dev_shm(shm_name)
    with Ring.create(shm_name, 4) as r:
        assert os.path.exists(path)
        with Ring.attach(shm_name) as a:
            assert r.try_push(b"hi") and a.try_pop() == b"hi"
        assert a.closed
        assert os.path.exists(path), "the attacher's with block does not unlink"
    assert r.closed
    assert not os.path.exists(path)


def test_with_block_unlinks_on_error(shm_name):
    with pytest.raises(KeyError):
        with Ring.create(shm_name, 4):
            raise KeyError("boom")
    assert not os.path.exists(dev_shm(shm_name))


def test_unlink_is_idempotent_and_keeps_mappings(shm_name):
    with ring_pair(shm_name, 4) as (prod, cons):
        prod.unlink()
        prod.unlink()
        cons.unlink()
        assert not os.path.exists(dev_shm(shm_name))
        assert prod.try_push(b"still mapped")
        assert cons.try_pop() == b"still mapped"
        with pytest.raises(RingError, match="no ring"):
            Ring.attach(shm_name)


def test_segment_is_owner_only_and_sized(shm_name):
    with Ring.create(shm_name, 16, 128) as r:
        st = os.stat(dev_shm(shm_name))
        assert st.st_mode & 0o777 == 0o600
        assert st.st_uid == os.getuid()
        assert st.st_size == segment_size(16, 128) == int(r.header()["segment_size"])


# ---- header layout -----------------------------------------------------------------

def _c_scalar_fields():
    """(name, offset, size) of every non-padding scalar of struct rb_header."""
    out = []
    for outer, f in ffi.typeof("struct rb_header").fields:
        if f.type.kind == "struct":
            for inner, g in f.type.fields:
                if not inner.startswith("_pad"):
                    out.append((inner, header_offset(outer, inner), ffi.sizeof(g.type)))
        elif not outer.startswith("_pad"):
            out.append((outer, header_offset(outer), ffi.sizeof(f.type)))
    return out


def test_header_dtype_agrees_with_cffi():
    fields = _c_scalar_fields()
    assert HEADER_DTYPE.itemsize == ffi.sizeof("struct rb_header") == HEADER_SIZE == 512
    assert list(HEADER_DTYPE.names) == [name for name, _, _ in fields]
    for name, offset, size in fields:
        ftype, off = HEADER_DTYPE.fields[name][:2]
        assert off == offset, name
        assert ftype.itemsize == size, name
        assert ftype.byteorder in ("<", "=", "|"), name
    # The spot checks the diagram in _ring.h promises.
    for name, line in [("prod_tail", 1), ("cons_head", 2), ("cons_sleep", 5), ("prod_sleep", 6)]:
        assert HEADER_DTYPE.fields[name][1] == line * LINE
    assert HEADER_DTYPE.fields["creator_closed"][1] == 7 * LINE
    assert HEADER_DTYPE.fields["magic"][1] == 0
    assert HEADER_DTYPE.fields["attacher_pid"][0] == np.dtype("<i4")
    assert HEADER_DTYPE.fields["creator_pid"][0] == np.dtype("<i4")


def test_header_geometry(shm_name):
    cap, slot = 32, 192
    with Ring.create(shm_name, cap, slot) as r:
        h = r.header()
        assert h.dtype == HEADER_DTYPE
        assert int(h["magic"]) == lib.RB_MAGIC
        assert bytes(np.uint64(h["magic"]).tobytes()) == b"PMGRRING"
        assert int(h["version"]) == lib.RB_VERSION
        assert int(h["capacity"]) == cap == r.capacity
        assert int(h["slot_size"]) == slot == r.slot_size
        assert int(h["lens_offset"]) == HEADER_SIZE
        assert int(h["slots_offset"]) == HEADER_SIZE + -(-cap * 4 // LINE) * LINE
        assert int(h["segment_size"]) == segment_size(cap, slot)
        assert int(h["creator_pid"]) == os.getpid()
        assert int(h["attacher_pid"]) == 0
        assert r.peer_pid == 0
        assert int(h["creator_closed"]) == int(h["attacher_closed"]) == 0
        assert counters(r) == (0, 0)

        with Ring.attach(shm_name) as a:
            assert a.capacity == cap and a.slot_size == slot
            for ring in (r, a):
                hh = ring.header()
                assert int(hh["attacher_pid"]) == os.getpid()
                assert int(hh["creator_pid"]) == os.getpid()
            assert r.peer_pid == a.peer_pid == os.getpid()
            assert r.peer_alive() and a.peer_alive()
            snap = a.header()
            assert r.try_push(b"z")
            assert int(snap["prod_tail"]) == 0, "header() is a snapshot"
            assert int(a.header()["prod_tail"]) == 1
        assert int(r.header()["attacher_closed"]) == 1


def test_header_shows_the_creator_closing(shm_name):
    with ring_pair(shm_name, 4) as (creator, attacher):
        creator.close()
        h = attacher.header()
        assert int(h["creator_closed"]) == 1
        assert int(h["attacher_closed"]) == 0


def test_exception_hierarchy():
    for exc in (Full, Empty, Closed, MessageTooLarge, RingError):
        assert issubclass(exc, RingException)
    assert issubclass(Full, queue.Full) and issubclass(Empty, queue.Empty)
    assert issubclass(PeerDied, Closed)
    assert issubclass(MessageTooLarge, ValueError)
    assert not issubclass(RingError, ValueError)


def test_unique_name_prefix():
    a, b = ringbuf.unique_name("procmgr-test"), ringbuf.unique_name("procmgr-test")
    assert a != b
    assert a.startswith(f"/procmgr-test-{os.getpid()}-")



def _doorbell_rung(fd: int) -> bool:
    try:
        return os.eventfd_read(fd) > 0
    except BlockingIOError:
        return False


@contextlib.contextmanager
def batched_and_asleep(shm_name):
    """(producer, consumer, doorbell): the producer batches its wakes, the
    consumer has armed the empty ring and sleeps on the doorbell."""
    with ring_pair(shm_name, 8) as (prod, cons):
        bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            prod.set_doorbell(bell)
            prod.batch_wakes(True)
            assert not cons.arm()             # empty: the consumer goes to sleep
            yield prod, cons, bell
        finally:
            os.close(bell)


def test_batched_pushes_wake_an_armed_consumer_once_at_the_end(shm_name):
    with batched_and_asleep(shm_name) as (prod, cons, bell):
        for i in range(3):
            prod.push(b"m%d" % i)
        assert not _doorbell_rung(bell), "a batched push woke the consumer"
        prod.wake_consumer()
        assert _doorbell_rung(bell)
        prod.wake_consumer()                  # nobody asleep any more: no second ring
        assert not _doorbell_rung(bell)
        assert [cons.pop(0) for _ in range(3)] == [b"m0", b"m1", b"m2"]


def test_turning_batched_wakes_off_wakes_for_what_is_unannounced(shm_name):
    with batched_and_asleep(shm_name) as (prod, cons, bell):
        prod.push(b"x")
        prod.batch_wakes(False)
        assert _doorbell_rung(bell)
        assert cons.pop(0) == b"x"
        assert not cons.arm()                 # unbatched: the next push rings at once
        prod.push(b"y")
        assert _doorbell_rung(bell)


def test_a_forgotten_wake_costs_one_slice_not_a_hang(shm_name):
    """A futex sleeper re-checks the ring after every slice (50 ms)."""
    with ring_pair(shm_name, 8) as (prod, cons):
        prod.batch_wakes(True)
        got = []
        t = threading.Thread(target=lambda: got.append(cons.pop(timeout=5)))
        t.start()
        time.sleep(0.05)
        start = time.monotonic()
        prod.push(b"late")
        t.join(5)
        assert got == [b"late"]
        assert time.monotonic() - start < 1.0


def _timed_wait(cons, prod, push_after: float) -> float:
    """CPU seconds the waiting thread spent in one wait_data whose message
    the producer pushes ``push_after`` seconds in."""
    pusher = threading.Timer(push_after, prod.push, (b"x",))
    cpu = time.thread_time()
    pusher.start()
    assert cons.wait_data(timeout=5)
    spent = time.thread_time() - cpu
    pusher.join()
    assert cons.pop(0) == b"x"
    return spent


def test_a_waiter_stops_spinning_for_late_answers_and_spins_again_for_prompt_ones(shm_name):
    """The spin before sleeping adapts: it is halved after each wait it did
    not catch, to nothing, and back to full after one it would have caught
    -- a client waiting on programs that run for a while does not burn the
    CPU they need. Measured in the waiting thread's own CPU time, with the
    spin widened to 5 ms so that a spin shows over the noise."""
    with ring_pair(shm_name, 8) as (prod, cons):
        cons._h.spin_ns = cons._h.spin_next = 5_000_000
        late = [_timed_wait(cons, prod, 0.030) for _ in range(12)]
        assert late[0] > 0.003, f"the first wait did not spin its 5 ms: {late[0]:.4f} s"
        assert sum(late[-4:]) < 0.003, f"late answers still spun: {late}"
        # An answer within the spin (it slept, but a spin would have caught
        # it) restores the full spin: the next prompt answer is spun for.
        _timed_wait(cons, prod, 0.001)
        assert _timed_wait(cons, prod, 0.002) > 0.0015


def test_a_sealed_ring_goes_by_descriptor_and_cannot_shrink():
    """create_sealed: a ring in a memory file sealed against shrinking and
    growing, handed over as a descriptor (attach_fd). Nobody can shrink it
    (the SIGBUS a shrunk segment gives whoever maps it), not even its
    creator; it has no name, so nothing is in /dev/shm; attach_fd refuses
    a file that is not sealed, and owns (closes) what it is given."""
    import fcntl
    import socket

    shm_before = set(os.listdir("/dev/shm"))
    ring = Ring.create_sealed(8, label="t")
    a, b = socket.socketpair()
    try:
        socket.send_fds(a, [b"rings"], [ring.fileno()])
        _, fds, _, _ = socket.recv_fds(b, 16, 1)
        ring.release_fd()
        assert ring.fileno() == -1
        peer = Ring.attach_fd(fds[0], "t")
        with pytest.raises(OSError):
            os.fstat(fds[0])                     # attach_fd closed it: the mapping holds the file
        ring.push(b"over")
        assert peer.pop(timeout=1) == b"over" and peer.name == "memfd:t"
        for fd in os.listdir("/proc/self/fd"):
            try:
                if not os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:ringbuf-t"):
                    continue
            except OSError:
                continue
            with pytest.raises(PermissionError):
                os.ftruncate(int(fd), 0)
            seals = fcntl.fcntl(int(fd), fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        assert set(os.listdir("/dev/shm")) == shm_before
        peer.close()
    finally:
        a.close()
        b.close()
        ring.close()
    plain = os.memfd_create("plain")
    with pytest.raises(RingError, match="not in a sealed memory file"):
        Ring.attach_fd(plain)
    with pytest.raises(OSError):
        os.fstat(plain)                          # closed, though refused


def test_a_lying_fill_level_never_holds_a_producer_back(shm_name):
    """A producer's room is its own index against the consumer's, checked
    (rb_room) -- not the fill level the segment shows (rb_len), which the
    peer can write: a prod_tail there saying "full" once held a multi-slot
    message back for good, its producer spinning. A consumer's index ahead
    of what was published is refused when the producer next looks at it."""
    with ring_pair(shm_name, 8) as (prod, cons):
        tail, head = counters(prod)
        with raw_segment(shm_name) as mm:
            struct.pack_into("<Q", mm, header_offset("prod_tail"), (head + 8) % U64)
        assert len(prod) == 8                                 # the segment says full
        assert prod.try_push_all(bytes(3 * prod.slot_size))   # its own index: room
        with raw_segment(shm_name) as mm:
            struct.pack_into("<Q", mm, header_offset("cons_head"), (tail + 100) % U64)
        with pytest.raises(RingError, match="corrupt"):   # more than it knows free: it looks
            prod.try_push_all(bytes(6 * prod.slot_size))
