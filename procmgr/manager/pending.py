"""Pending clients: requests sent to a spawnd and not yet answered by it.

Two strategies behind one interface, so they can be measured side by side
(``pending="replyq" | "hashtable"``), both in C (procmgr/manager/core/_pending.c) because
the core claims and matches a slot on the manager's critical turns:

- ``ReplyQueue`` (the point of the seed): a preallocated ring of slots per
  spawnd. Sending claims the next slot; the n-th reply matches the oldest.
  The invariant this relies on -- each request to spawnd k gets exactly one
  reply, in order -- is *checked*: the reply echoes the request's sequence
  number, op and domain, and a mismatch fails the affected clients loudly
  instead of shifting every later match (Barrelfish defect 16).
- ``HashTable`` (the design before it): records keyed by (op, domain),
  chained when several requests share a key (concurrent killers, spans),
  found by the reply's key and then by its sequence number.

Both: ``claim(seq, op, dom) -> PendingSlot``, ``match(seq, op, dom) ->
(slot or None, slots whose reply was lost)``, ``release(slot)``,
``drain()``, ``has_room()``, ``len()``, ``capacity``, ``kind``. A slot
carries ``seq, op, dom, core`` and what the reply handler needs:
``client`` (the id of the client to answer, 0 for an internal request),
``client_seq`` and ``extra`` (a spawn's client op). A reply queue's slot is
cleared on release (seq -1, the rest 0) and reused.

Ownership (STYLE rule 10): a slot belongs to the structure from ``claim``
until ``release``. The reply handler runs *between* ``match`` and
``release``, so a request it sends meanwhile can never be given the slot it
is still reading (the shape of Barrelfish defect 1, a use-after-free).
"""

from __future__ import annotations

from procmgr.manager._core import HashTable, PendingSlot, ReplyQueue, seq_before

__all__ = ["HashTable", "PendingSlot", "ReplyQueue", "STRATEGIES", "make_pending", "seq_before"]

STRATEGIES = {"replyq": ReplyQueue, "hashtable": HashTable}


def make_pending(kind: str, capacity: int = 1024):
    try:
        return STRATEGIES[kind](capacity)
    except KeyError:
        raise ValueError(f"pending must be one of {', '.join(STRATEGIES)}, got {kind!r}") from None
