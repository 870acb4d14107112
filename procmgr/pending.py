"""Pending clients: requests sent to a spawnd and not yet answered by it.

Two strategies behind one interface, so they can be measured side by side
(``pending="replyq" | "hashtable"``):

- ``ReplyQueue`` (the point of the seed): a preallocated ring of slots per
  spawnd. Sending claims the next slot; the n-th reply matches the oldest.
  The invariant this relies on -- each request to spawnd k gets exactly one
  reply, in order -- is *checked*: the reply echoes the request's sequence
  number, op and domain, and a mismatch fails the affected clients loudly
  instead of shifting every later match (Barrelfish defect 16).
- ``HashTable`` (the design before it): records keyed by (op, domain),
  chained when several requests share a key (concurrent killers, spans),
  found by the reply's key and then by its sequence number.

Ownership (STYLE rule 10): a slot belongs to the structure from ``claim``
until ``release``. The reply handler runs *between* ``match`` and
``release``, so a request it sends meanwhile can never be given the slot it
is still reading (the shape of Barrelfish defect 1, a use-after-free).
"""

from __future__ import annotations

from collections import deque


class PendingSlot:
    """One request awaiting its spawnd reply. Reused; never shared."""

    __slots__ = ("seq", "op", "dom", "core", "client", "client_seq", "extra")

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.seq = -1
        self.op = 0
        self.dom = 0
        self.core = 0
        self.client = None      # the ClientBinding to answer, or None (internal)
        self.client_seq = 0
        self.extra = None       # what the handler needs back (e.g. status)


def seq_before(a: int, b: int) -> bool:
    """Serial-number order for u32 sequence numbers that wrap."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


_NONE: tuple = ()


class ReplyQueue:
    """Preallocated FIFO of pending-client slots for one spawnd."""

    kind = "replyq"

    def __init__(self, capacity: int = 1024):
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"reply queue capacity must be a power of two, got {capacity}")
        self._slots = [PendingSlot() for _ in range(capacity)]
        self._mask = capacity - 1
        self._head = 0   # oldest pending
        self._tail = 0   # next to claim
        self.capacity = capacity

    def __len__(self) -> int:
        return self._tail - self._head

    def has_room(self) -> bool:
        return self._tail - self._head < self.capacity

    def claim(self, seq: int, op: int, dom: int) -> PendingSlot:
        """The next slot, for a request about to be pushed to the spawnd."""
        if self._tail - self._head >= self.capacity:
            raise OverflowError("reply queue full: the caller must check has_room()")
        slot = self._slots[self._tail & self._mask]
        self._tail += 1
        slot.seq, slot.op, slot.dom = seq, op, dom
        return slot

    def match(self, seq: int, op: int, dom: int):
        """Find the slot a reply answers: (slot or None, slots whose reply was lost).

        In order, the reply answers the oldest slot. If it names a younger
        one, the older ones lost their replies; they are returned so their
        clients are failed (and then released). A reply older than every
        pending slot (a duplicate) or naming none matches nothing.
        """
        if self._head == self._tail:
            return None, _NONE
        oldest = self._slots[self._head & self._mask]
        if oldest.seq == seq:
            return (oldest, _NONE) if (oldest.op, oldest.dom) == (op, dom) else (None, _NONE)
        if seq_before(seq, oldest.seq):
            return None, _NONE          # duplicate or stale reply
        lost = []
        for k in range(self._head, self._tail):
            slot = self._slots[k & self._mask]
            if slot.seq == seq:
                if (slot.op, slot.dom) != (op, dom):
                    return None, _NONE
                return slot, lost
            lost.append(slot)
        return None, _NONE              # from the future: matches nothing

    def release(self, slot: PendingSlot) -> None:
        """The reply handler is done with ``slot`` (always the oldest)."""
        if self._head == self._tail:
            raise AssertionError("reply queue release with nothing pending")
        oldest = self._slots[self._head & self._mask]
        if slot is not oldest:
            raise AssertionError("reply queue released out of order")
        slot.clear()
        self._head += 1

    def drain(self) -> list[PendingSlot]:
        """Every pending slot, oldest first (the spawnd died); caller releases."""
        return [self._slots[k & self._mask] for k in range(self._head, self._tail)]


class HashTable:
    """The pre-reply-queue design: records by (op, domain), chained."""

    kind = "hashtable"

    def __init__(self, capacity: int = 1024):
        self._table: dict[tuple[int, int], deque[PendingSlot]] = {}
        self._order: dict[PendingSlot, None] = {}   # claim order, for drain
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self._order)

    def has_room(self) -> bool:
        return len(self._order) < self.capacity

    def claim(self, seq: int, op: int, dom: int) -> PendingSlot:
        if len(self._order) >= self.capacity:
            raise OverflowError("pending table full: the caller must check has_room()")
        slot = PendingSlot()
        slot.seq, slot.op, slot.dom = seq, op, dom
        self._table.setdefault((op, dom), deque()).append(slot)
        self._order[slot] = None
        return slot

    def match(self, seq: int, op: int, dom: int):
        chain = self._table.get((op, dom))
        if chain:
            for slot in chain:
                if slot.seq == seq:
                    return slot, _NONE
        return None, _NONE

    def release(self, slot: PendingSlot) -> None:
        key = (slot.op, slot.dom)
        chain = self._table[key]
        chain.remove(slot)
        if not chain:
            del self._table[key]
        del self._order[slot]

    def drain(self) -> list[PendingSlot]:
        return list(self._order)


STRATEGIES = {"replyq": ReplyQueue, "hashtable": HashTable}


def make_pending(kind: str, capacity: int = 1024):
    try:
        return STRATEGIES[kind](capacity)
    except KeyError:
        raise ValueError(f"pending must be one of {', '.join(STRATEGIES)}, got {kind!r}") from None
