"""Messages on the wire: the message object, encoding, the decoder of a
ring's slots, and sending and taking whole messages.

The header slot and every number in it are defined once, in protocol.h
(numbers.py makes the Python side). A payload longer than the 32 bytes that
fit inline continues in ``nfrag`` raw slots after the header; the sender
pushes them in one all-or-nothing batch, so a consumer never sees fragments
of two messages interleaved. One-slot messages are read and written in C
(_wire.c, and the manager's and the worker's loops, all through
protocol.h's wire_read_one); everything else is read here, by ``Decoder``.

Long spawns. A spawn whose payload is past MAX_PAYLOAD (an argv or env
past the original's 2 KiB, up to SPAWN_MAX_PAYLOAD) may be longer than
the ring it goes through, so it cannot go in one batch: ``send_long``
pushes its slots in pieces as the reader makes room. Each ring has one
producer, which sends nothing else until the last piece is in, so the
message's slots still follow each other; the reader (``Decoder``) holds
what has come of it -- never more than the header announced, checked
against that op's limit first -- and takes the rest in bulk as it comes,
a ring's worth at most per call, so the reader's other peers wait for a
copy of at most one ring, not for the whole message.
"""

from __future__ import annotations

import functools

from procmgr.protocol import _wire
from procmgr.protocol.numbers import (
    HEADER,
    HEADER_FIELDS,
    INLINE,
    LONG_OPS,
    MAX_PAYLOAD,
    PROGRAM_WORDS_MAX,
    SLOT,
    SPAWN_MAX_PAYLOAD,
    Err,
    Op,
)
from ringbuf import EFULL as _EFULL
from ringbuf import Closed


@functools.cache
def _msg_dtype():
    import numpy as np
    return np.dtype([(n, dt) for n, _, dt in HEADER_FIELDS])


def __getattr__(name: str):
    # MSG_DTYPE, the header as a numpy record, is made when asked for:
    # numpy is not imported by what a worker or the manager needs (it
    # took ~14 MB of a worker's ~18 MB of its own memory).
    if name == "MSG_DTYPE":
        return _msg_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ProtocolError(Exception):
    """A message that cannot be decoded; ``seq``/``op`` say whom to answer."""

    def __init__(self, detail: str, op: int = 0, seq: int = 0):
        super().__init__(detail)
        self.detail = detail
        self.op = op
        self.seq = seq
        self.code = Err.BAD_MESSAGE


# The message object is C (procmgr/protocol/_wire.c), so that the codec's hot path
# never builds one field by field in Python:
#   Msg(op, seq=0, core=0, dom=0, nonce=0, err=0, status=0, flags=0, payload=b"")
# with those nine attributes (writable), ``==`` over all of them, ``is_reply``,
# and ``reply(err=0, status=0, flags=0, **fields)``: the answer to a request,
# same op, seq, core, domain and nonce unless given, REPLY set.
Msg = _wire.Msg
_wire_send, _wire_take = _wire.send, _wire.take
_TAKE_DONE = (_wire.TAKE_EMPTY, _wire.TAKE_LIMIT)


def frags_for(plen: int) -> int:
    return 0 if plen <= INLINE else -(-(plen - INLINE) // SLOT)


def payload_limit(op: int) -> int:
    """The longest payload a message of ``op`` may carry."""
    if op == Op.PROGRAM:
        return SPAWN_MAX_PAYLOAD + 4 + PROGRAM_WORDS_MAX
    return SPAWN_MAX_PAYLOAD if op in LONG_OPS else MAX_PAYLOAD


def encode(msg: Msg) -> bytes:
    """The message as 64 * (1 + nfrag) bytes, ready to push (in one batch
    when it is at most MAX_PAYLOAD; see "Long spawns" above)."""
    plen = len(msg.payload)
    if plen > payload_limit(msg.op):
        raise ProtocolError(f"payload of {plen} bytes is over the "
                            f"{payload_limit(msg.op)}-byte limit", msg.op, msg.seq)
    nfrag = frags_for(plen)
    head = HEADER.pack(msg.op, msg.flags, msg.core, msg.seq, msg.dom, msg.err, nfrag,
                       msg.nonce, msg.status, plen, msg.payload[:INLINE])
    if not nfrag:
        return head
    rest = msg.payload[INLINE:]
    return head + rest + b"\0" * (nfrag * SLOT - len(rest))


def encode_rows(msg: Msg):
    """``encode`` as an array of MSG_DTYPE rows (for Ring.push_many)."""
    import numpy as np
    return np.frombuffer(encode(msg), dtype=_msg_dtype())


class HeldBytes:
    """A bound on the bytes of long messages that a reader holds half
    received, over all its peers. Without one, each of the manager's
    clients could make it hold 2 MiB by sending the start of a long spawn
    and no more -- a thousand clients, 2 GiB. A Decoder given it takes a
    long message's length at its header and gives it back at its end (or
    its peer's: ``Decoder.release``); a message that does not fit is read
    on and dropped, and answered BUSY."""

    __slots__ = ("limit", "held")

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


class Decoder:
    """Turns a stream of slots from one ring back into messages.

    Feed it slots in arrival order (``feed``); it returns a Msg per complete
    message, a ProtocolError per bad one, or None while continuation slots
    are still to come (they may arrive in a later batch). A bad header is
    answered with an error and only that slot is dropped: the next slot is
    read as a header again. ``budget``: a HeldBytes that bounds what long
    messages may hold (None: no bound, for a reader whose peer is its own).
    """

    __slots__ = ("_pending", "_plen", "_need", "_parts", "partial", "_budget", "_held",
                 "_refused")

    def __init__(self, budget: HeldBytes | None = None):
        # True while a message's continuation slots are still missing (a
        # plain attribute: take() reads it once per batch).
        self.partial = False
        self._pending: Msg | None = None
        self._plen = 0
        self._need = 0
        self._parts: list[bytes] = []
        self._budget = budget
        self._held = 0                  # what the message begun took from the budget
        self._refused: ProtocolError | None = None   # its answer, if it did not fit

    def feed(self, slot: bytes) -> Msg | ProtocolError | None:
        if self._pending is not None:
            return self._continue(slot)
        if len(slot) != SLOT:
            return ProtocolError(f"truncated message: {len(slot)} of {SLOT} header bytes")
        (op, flags, core, seq, dom, err, nfrag, nonce, status, plen,
         inline) = HEADER.unpack(slot)
        if op not in Op._value2member_map_:
            return ProtocolError(f"unknown op {op}", op, seq)
        if plen > MAX_PAYLOAD and plen > payload_limit(op):
            return ProtocolError(
                f"payload length {plen} is over the {payload_limit(op)}-byte limit", op, seq)
        if nfrag != frags_for(plen):
            return ProtocolError(
                f"payload length {plen} needs {frags_for(plen)} continuation slots, "
                f"header says {nfrag}", op, seq)
        msg = Msg(op, seq, core, dom, nonce, err, status, flags, inline[:plen])
        if not nfrag:
            return msg
        if plen > MAX_PAYLOAD and self._budget is not None:
            if self._budget.take(plen):
                self._held = plen
            else:
                self._refused = ProtocolError(
                    f"the manager holds {self._budget.held} bytes of long requests half "
                    f"received, and {plen} more would pass its bound of "
                    f"{self._budget.limit}: this one was dropped; send it again", op, seq)
                self._refused.code = Err.BUSY
        self._pending, self._plen, self._need, self._parts = msg, plen, nfrag, [inline]
        self.partial = True
        return None

    @property
    def missing(self) -> int:
        """Continuation slots still to come of the message begun."""
        return self._need

    def release(self) -> None:
        """Forget the message begun (its peer is gone), and give back what
        it held of the budget."""
        if self._budget is not None:
            self._budget.give(self._held)
        self._pending, self._parts, self.partial, self._need = None, [], False, 0
        self._held, self._refused = 0, None

    def _continue(self, slots: bytes) -> Msg | ProtocolError | None:
        """Continuation slots, one or (``take``, for a long message) many
        at once, never more than are missing."""
        msg, refused = self._pending, self._refused
        if len(slots) % SLOT or not slots:
            self.release()
            return ProtocolError(
                f"truncated continuation slot: {len(slots)} of {SLOT} bytes", msg.op, msg.seq)
        if refused is None:
            self._parts.append(slots)
        self._need -= len(slots) // SLOT
        if self._need:
            return None
        if refused is None:
            msg.payload = b"".join(self._parts)[: self._plen]
        self.release()
        return msg if refused is None else refused


def send(ring, msg: Msg) -> bool:
    """Put ``msg`` in ``ring`` now, all its slots or none; False if it does
    not fit. Never waits. A one-slot message goes straight from the object
    into the slot (_wire); a longer one is encoded here and pushed whole."""
    rc = _wire_send(ring.handle_addr, msg)
    if rc == 0:
        return True
    if rc == _EFULL:
        return False
    if rc == _wire.SEND_NOT_INLINE:
        return ring.try_push_all(encode(msg))
    ring.raise_code(rc, "send")


def send_long(ring, data: bytes, start: int, wait) -> None:
    """Put an encoded message in ``ring`` in pieces, as its reader makes
    room (see "Long spawns" above): for one too long for one batch.
    ``start`` is ``ring.produced`` before its first piece: how far it got
    is read off the ring's own index, so a call cut short by an exception
    (a Ctrl-C) is finished by calling again with the same ``start``. The
    caller is the ring's one producer and sends nothing else until then.
    ``wait()`` is called while the ring is full."""
    view = memoryview(data)
    while (at := (ring.produced - start) * SLOT) < len(data):
        pushed = ring.push_slots(view[at:])
        ring.wake_consumer()
        if not pushed:
            wait()


def take(ring, decoder: Decoder, limit: int = 1 << 30,
         out: list | None = None) -> list[Msg | ProtocolError]:
    """Up to ``limit`` decoded messages (or decode errors) now in ``ring``;
    never waits. A message whose fragments are not all in yet stays in
    ``decoder`` for the next call. A closed or dead peer raises ringbuf's
    Closed -- but only once what it sent before has been returned.
    ``out``: an empty list to put them in as they come (what a call cut
    short by an exception had taken is there), returned.

    One-slot messages are read in C (_wire.take), which stops in front of
    anything else: a message with continuation slots, or a slot that is not
    a valid header, is fed to ``decoder`` here, one slot at a time."""
    out = [] if out is None else out
    addr = ring.handle_addr
    while len(out) < limit:
        if not decoder.partial and _wire_take(addr, limit - len(out), out) in _TAKE_DONE:
            break
        # Declined by _wire (or the ring reported an error): the Python way.
        try:
            # Continuation slots in bulk -- up to a slot that is short,
            # which try_pop gives as it is, for the Decoder to refuse.
            slot = decoder.missing > 1 and ring.pop_slots(
                min(decoder.missing, ring.capacity)) or ring.try_pop()
        except Closed:
            if out:
                return out      # the next call raises again: Closed is sticky
            raise
        if slot is None:
            break
        item = decoder.feed(slot)
        if item is not None:
            out.append(item)
    return out


