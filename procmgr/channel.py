"""A ring pair as one end of a conversation: messages in, messages out.

The manager talks to clients and to spawnd workers the same way, so both
are Channels. Sending never blocks the (single-threaded) manager: a message
that does not fit goes to a backlog, flushed in order when the peer has
made room. Receiving decodes slots into messages, reassembling fragments.

A peer that closed its end or died is not an error here: the channel
records it (``peer_gone``) and the loop releases what the peer held.
"""

from __future__ import annotations

from collections import deque

from procmgr.protocol import Decoder, Msg, ProtocolError, encode, send, take
from ringbuf import Closed, Ring


class Channel:
    __slots__ = ("inbound", "outbound", "decoder", "backlog", "name", "peer_gone")

    def __init__(self, inbound: Ring, outbound: Ring, name: str = ""):
        self.inbound = inbound      # we consume
        self.outbound = outbound    # we produce
        # The manager answers a pass's worth of messages at a time: the peer
        # is woken once, after the pass (the event loop's RingSet.wake), not
        # by the first answer.
        outbound.batch_wakes(True)
        self.decoder = Decoder()
        self.backlog: deque[bytes] = deque()
        self.name = name
        self.peer_gone = False

    def send(self, msg: Msg) -> bool:
        """Queue ``msg`` for the peer, in order; True if it is in the ring now."""
        try:
            if self.backlog or not send(self.outbound, msg):
                self.backlog.append(encode(msg))
                return False
        except Closed:
            self.peer_gone = True     # nobody to tell any more
            self.backlog.clear()
            return False
        return True

    def flush(self) -> bool:
        """Push what the backlog holds while it fits; True once it is empty."""
        backlog, push = self.backlog, self.outbound.try_push_all
        try:
            while backlog:
                if not push(backlog[0]):
                    return False
                backlog.popleft()
        except Closed:
            self.peer_gone = True
            backlog.clear()
        return True

    def receive(self, limit: int = 64) -> list[Msg | ProtocolError]:
        """Up to ``limit`` decoded messages (or decode errors) now in the ring."""
        try:
            return take(self.inbound, self.decoder, limit)
        except Closed:             # PeerDied too: it closed or it died
            self.peer_gone = True
            return []

    def close(self) -> None:
        for ring in (self.inbound, self.outbound):
            ring.close()
        self.peer_gone = True
