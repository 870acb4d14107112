"""What the manager keeps per spawnd worker: its channel, the send queue
and the pending-client structure (reply queue or hashtable).

Invariant (checked, not assumed): each request to spawnd k gets exactly one
reply, in order. Every request carries the next sequence number of this
spawnd; ``pending.match`` checks the reply's echo.

A request waits in the send queue while the pending structure is full
(backpressure: the reply queue is preallocated and never grows) or while
the request ring has no room; it leaves the send queue only when it is in
the ring *and* has its pending slot, so its ownership moves in one step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from procmgr.channel import Channel
from procmgr.pending import make_pending
from procmgr.protocol import Msg


@dataclass(slots=True)
class Outgoing:
    """A request to a spawnd not yet sent, and whom to answer for it."""

    msg: Msg
    client: object = None
    client_seq: int = 0
    extra: object = None


class SpawndState:
    def __init__(self, core: int, channel: Channel, pending: str = "replyq",
                 capacity: int = 1024):
        self.core = core
        self.channel = channel
        self.pending = make_pending(pending, capacity)
        self.sendq: deque[Outgoing] = deque()
        self.next_seq = 1
        self.alive = True
        self.sent = 0
        self.replies = 0
        self.protocol_errors = 0

    def send(self, msg: Msg, client=None, client_seq: int = 0, extra=None) -> None:
        """Send a request now if nothing is queued before it, else queue it."""
        msg.seq = self.next_seq
        self.next_seq = (self.next_seq + 1) & 0xFFFFFFFF
        if not self.sendq and self.pending.has_room() and not self.channel.backlog:
            self._dispatch(msg, client, client_seq, extra)   # nothing queued before it
        else:
            self.sendq.append(Outgoing(msg, client, client_seq, extra))
            self.flush()

    def flush(self) -> None:
        """Move queued requests on while the ring and the pending structure have room."""
        sendq, pending, channel = self.sendq, self.pending, self.channel
        channel.flush()
        while sendq and pending.has_room() and not channel.backlog:
            out = sendq.popleft()
            self._dispatch(out.msg, out.client, out.client_seq, out.extra)

    def _dispatch(self, msg: Msg, client, client_seq: int, extra) -> None:
        # Into the ring, or (ring full) first in the channel's ordered
        # backlog; either way its place in the spawnd's order is fixed, so
        # it takes its pending slot now.
        self.channel.send(msg)
        slot = self.pending.claim(msg.seq, msg.op, msg.dom)
        slot.core = self.core
        slot.client, slot.client_seq, slot.extra = client, client_seq, extra
        self.sent += 1

    @property
    def queued(self) -> int:
        return len(self.sendq)
