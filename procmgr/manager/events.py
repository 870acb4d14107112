"""Events for clients: what happened to domains and programs, asked for
with EVENTS (protocol.h, "Events").

The core records every event in one log, numbered 1, 2, ... in the order
it happened: a domain's start and end at its transition (table.c), a
program's start, restart, backoff and settling from the supervisor
(supervisor.py, Core.record_event). The log keeps the newest ``events``
(8,192 unless the Manager is told otherwise); what is older is gone.

A client asks for the events after the last it has seen -- a long poll,
as a watch in etcd or Kubernetes: if there are some, they are the answer
at once (as many as one answer holds, from the oldest kept); if not, the
request waits here until one is recorded or its own wait (at most
EVENTS_WAIT_MAX_MS) is over, and is answered empty then. So:

- the manager never blocks on a consumer and holds nothing per consumer
  but its waiting requests: a slow one falls behind in the log, and the
  answer that finds its place gone says how many it lost;
- a consumer sees each event at least once and in order (one log, so in
  order per domain too); one that reconnects with its last seq sees
  nothing twice that it had taken in, unless it asks again from before;
- every client sees every domain's events, as it sees every domain in
  ``domains()`` and ``status``: an event names a domain by its id, never
  by its cap (the nonce is its holders' secret).

The requests waiting are answered in the loop's pass that recorded an
event (``deliver``, after the supervisor's pump), each at most once: the
core's exactly-once check stands behind that as for every answer. While
any wait, the core is told which event they wait for (``events_wanted``):
the loop's C, which serves and sleeps again without Python, returns to
Python once it is recorded.
"""

from __future__ import annotations

from procmgr.errors import Err
from procmgr.protocol import EVENTS_WAIT_MAX_MS, MAX_PAYLOAD, Msg

# Requests of one client that may wait at once: an iterator given up
# leaves its request here until an event comes or its wait is over.
WAITING_PER_CLIENT = 64


class EventFeed:
    def __init__(self, mgr, call_later):
        self.mgr = mgr
        self.call_later = call_later
        # client id -> {seq: (client, msg, after)}: the requests waiting.
        self.waiting: dict[int, dict[int, tuple]] = {}
        # The newest event when the waiting were last answered or parked:
        # each of them asked for what comes after it.
        self.seen = 0

    def handle(self, client, msg: Msg) -> None:
        if not 0 <= msg.status <= EVENTS_WAIT_MAX_MS:
            return self.mgr.answer(client, msg, Err.BAD_MESSAGE, payload=(
                f"an events request waits 0..{EVENTS_WAIT_MAX_MS} ms, "
                f"not {msg.status}").encode())
        last = self.mgr.core.last_event
        # From now on, or from a seq not issued yet (a manager since
        # restarted numbers from 1 again): after the newest.
        after = min(msg.nonce, last)
        if after < last or msg.status == 0:
            return self._answer(client, msg, after)
        mine = self.waiting.setdefault(client.id, {})
        if len(mine) >= WAITING_PER_CLIENT:
            return self.mgr.answer(client, msg, Err.BUSY, payload=(
                f"{WAITING_PER_CLIENT} events requests of this client wait already").encode())
        mine[msg.seq] = (client, msg, after)
        self.seen = last
        self.mgr.core.events_wanted = last + 1     # the loop comes back to Python for it
        self.call_later(msg.status / 1000, lambda: self._expire(client.id, msg))

    def _answer(self, client, msg: Msg, after: int) -> None:
        payload, _ = self.mgr.core.events_after(after, MAX_PAYLOAD)
        self.mgr.answer(client, msg, payload=payload)

    def _expire(self, client_id: int, msg: Msg) -> None:
        """A request's wait is over: answered empty, if it still waits (the
        same request: its seq may be another's by now)."""
        mine = self.waiting.get(client_id)
        entry = mine.get(msg.seq) if mine else None
        if entry is not None and entry[1] is msg:
            del mine[msg.seq]
            if not mine:
                del self.waiting[client_id]
                if not self.waiting:
                    self.mgr.core.events_wanted = 0
            self._answer(entry[0], msg, entry[2])

    def deliver(self) -> None:
        """Once per pass of the loop: if an event was recorded since, every
        request waiting has its answer."""
        if not self.waiting or self.mgr.core.last_event == self.seen:
            return
        waiting, self.waiting = self.waiting, {}
        self.seen = self.mgr.core.last_event
        self.mgr.core.events_wanted = 0
        for mine in waiting.values():
            for client, msg, after in mine.values():
                self._answer(client, msg, after)

    def client_gone(self, client) -> None:
        """Its requests wait no more (their timers find them gone)."""
        self.waiting.pop(client.id, None)
        if not self.waiting:
            self.mgr.core.events_wanted = 0
