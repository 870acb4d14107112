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
event newer than theirs (``deliver``, after the supervisor's pump), each
at most once: the core's exactly-once check stands behind that as for
every answer. While any wait, the core is told the oldest event one of
them waits for (``events_wanted``): the loop's C, which serves and sleeps
again without Python, returns to Python once it is recorded.

Bounds: 64 requests waiting per client and 4,096 in all (``BUSY`` past
either), so that the pass answering them stays short; one answer's
payload made once for every request waiting from the same place; their
deadlines kept here, in a heap rebuilt when answers empty it, with one
loop timer for the earliest -- a request answered early leaves nothing
behind.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time

from procmgr.errors import Err
from procmgr.protocol import EVENTS_WAIT_MAX_MS, MAX_PAYLOAD, Msg

# Requests that may wait at once: per client (an iterator given up leaves
# its request here until an event comes or its wait is over), and in all
# (the pass that answers them all is everyone else's wait).
WAITING_PER_CLIENT = 64
WAITING_MAX = 4096


class EventFeed:
    def __init__(self, mgr, call_later):
        self.mgr = mgr
        self.call_later = call_later
        # client id -> {seq: (client, msg, after, deadline)}: the requests waiting.
        self.waiting: dict[int, dict[int, tuple]] = {}
        self.count = 0
        # The oldest "after" among them: an event past it answers some.
        self.low = 0
        # Their deadlines: (when, order, client id, msg), the soonest first;
        # entries answered since are skipped, and dropped when it is rebuilt.
        self._deadlines: list = []
        self._order = itertools.count()
        self._timer_at = math.inf       # the soonest loop timer armed

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
            return self._answer(client, msg, after, {})
        mine = self.waiting.setdefault(client.id, {})
        if len(mine) >= WAITING_PER_CLIENT or self.count >= WAITING_MAX:
            if not mine:
                del self.waiting[client.id]
            return self.mgr.answer(client, msg, Err.BUSY, payload=(
                f"{len(mine)} events requests of this client and {self.count} in all wait "
                f"already (at most {WAITING_PER_CLIENT} and {WAITING_MAX})").encode())
        deadline = time.monotonic() + msg.status / 1000
        mine[msg.seq] = (client, msg, after, deadline)
        self.low = after if self.count == 0 else min(self.low, after)
        self.count += 1
        self.mgr.core.events_wanted = self.low + 1  # the loop comes back to Python for it
        heapq.heappush(self._deadlines, (deadline, next(self._order), client.id, msg))
        self._arm(deadline)

    def _answer(self, client, msg: Msg, after: int, made: dict) -> None:
        """``made``: payloads already made in this pass, by ``after``."""
        payload = made.get(after)
        if payload is None:
            payload = made[after] = self.mgr.core.events_after(after, MAX_PAYLOAD)[0]
        self.mgr.answer(client, msg, payload=payload)

    def _take(self, client_id: int, msg: Msg):
        """The entry of a request still waiting, taken out; None if it
        was answered (its seq may be another request's by now)."""
        mine = self.waiting.get(client_id)
        entry = mine.get(msg.seq) if mine else None
        if entry is None or entry[1] is not msg:
            return None
        del mine[msg.seq]
        if not mine:
            del self.waiting[client_id]
        self.count -= 1
        return entry

    def _arm(self, deadline: float) -> None:
        if deadline < self._timer_at:
            self._timer_at = deadline
            self.call_later(max(0.0, deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        """The loop's timer: the requests whose wait is over are answered
        empty (what they asked after, once more), and the timer armed for
        the next."""
        self._timer_at = math.inf
        now, heap, made = time.monotonic(), self._deadlines, {}
        while heap and heap[0][0] <= now:
            _, _, client_id, msg = heapq.heappop(heap)
            entry = self._take(client_id, msg)
            if entry is not None:
                self._answer(entry[0], msg, entry[2], made)
        self._settled()

    def deliver(self) -> None:
        """Once per pass of the loop: the requests waiting for an event
        recorded since have their answers; the others wait on."""
        last = self.mgr.core.last_event
        if not self.count or last <= self.low:
            return
        made = {}
        for client_id in list(self.waiting):
            mine = self.waiting[client_id]
            for seq, (client, msg, after, _) in list(mine.items()):
                if after < last:
                    del mine[seq]
                    self.count -= 1
                    self._answer(client, msg, after, made)
            if not mine:
                del self.waiting[client_id]
        self._settled()

    def _settled(self) -> None:
        """After answers: the oldest place still waited on, for the core;
        the deadlines of the answered let go; a timer for the soonest."""
        if not self.count:
            self.mgr.core.events_wanted = 0
            self._deadlines.clear()
            return
        if len(self._deadlines) > 2 * self.count + 64:
            self._deadlines = [d for d in self._deadlines if self._waits(d[2], d[3])]
            heapq.heapify(self._deadlines)
        self.low = min(e[2] for mine in self.waiting.values() for e in mine.values())
        self.mgr.core.events_wanted = self.low + 1
        if self._deadlines:
            self._arm(self._deadlines[0][0])

    def _waits(self, client_id: int, msg: Msg) -> bool:
        entry = self.waiting.get(client_id, {}).get(msg.seq)
        return entry is not None and entry[1] is msg

    def client_gone(self, client) -> None:
        """Its requests wait no more."""
        mine = self.waiting.pop(client.id, None)
        if mine:
            self.count -= len(mine)
            self._settled()
