"""A ring pair as one end of a conversation: messages in, messages out.

The manager talks to clients and to spawnd workers the same way, so both
are Channels. Receiving is here: it decodes slots into messages,
reassembling fragments. Sending is the core's (procmgr/manager/core/peers.c),
which pushes into ``outbound`` and keeps what does not fit in an outbox of its
own, flushed in order when the peer has made room: sending never blocks
the (single-threaded) manager.

A peer that closed its end or died is not an error here: the channel
records it (``peer_gone``; the loop also asks the core, which finds out
when a send finds the ring closed: ``Core.lost``) and the loop releases
what the peer held. Nor is a peer that broke
its ring -- an impossible index or length, from a bug or on purpose: the
ring refuses every call from then on (ringbuf/_ring.h, "Trust"), the
channel records that too (``corrupt``), and the loop drops that one peer
and goes on serving the others.
"""

from __future__ import annotations

import os

from procmgr.protocol import Decoder, Msg, ProtocolError, take
from ringbuf import Closed, Ring, RingError


class Channel:
    __slots__ = ("inbound", "outbound", "decoder", "name", "peer_gone", "doorbell", "waker")

    def __init__(self, inbound: Ring, outbound: Ring, name: str = "", doorbell=None,
                 waker: int = -1):
        """``doorbell``: the loop's PeerDoorbell this peer rings, its own
        (the channel owns it and closes it), so that the loop looks only at
        peers that rang (procmgr/manager/core/_loop.c); None: the loop's
        shared one, and the peer is looked at in every pass. ``waker``: a
        descriptor ``outbound`` rings when the peer armed it for a doorbell
        (set by the caller; the channel owns it and closes it after the
        rings, which ring it as they close)."""
        self.inbound = inbound      # we consume
        self.outbound = outbound    # we produce
        self.doorbell = doorbell
        self.waker = waker
        # The manager answers a pass's worth of messages at a time: the peer
        # is woken once, after the pass (the event loop's RingSet.wake), not
        # by the first answer.
        outbound.batch_wakes(True)
        self.decoder = Decoder()
        self.name = name
        self.peer_gone = False

    def receive(self, limit: int = 64) -> list[Msg | ProtocolError]:
        """Up to ``limit`` decoded messages (or decode errors) now in the ring."""
        try:
            return take(self.inbound, self.decoder, limit)
        except Closed:             # PeerDied too: it closed or it died
            self.peer_gone = True
            return []
        except RingError:          # it broke the ring: see the top
            self.peer_gone = True
            return []

    @property
    def corrupt(self) -> bool:
        """The peer broke one of the two rings."""
        return self.inbound.corrupt or self.outbound.corrupt

    def close(self) -> None:
        self.decoder.release()      # a message it had begun holds nothing now
        for ring in (self.inbound, self.outbound):
            ring.close()
        if self.waker >= 0:
            os.close(self.waker)
            self.waker = -1
        if self.doorbell is not None:
            self.doorbell.close()

    @property
    def doorbell_fd(self) -> int:
        return -1 if self.doorbell is None else self.doorbell.fd
        self.peer_gone = True
