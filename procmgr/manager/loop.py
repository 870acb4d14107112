"""The manager's event loop, and nothing else.

``EventLoop`` sleeps until a peer's ring has something, lets the core
serve in C what it can straight from the rings (procmgr/manager/core/_loop.c), and
``poll`` hands the rest -- messages with continuation slots, the requests
Python answers, anything the C path stops in front of -- to the core in
the order they came. Spawnd replies go first: they free reply-queue slots
and answer clients.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import sys
import time
from collections import deque

from procmgr.manager._core import PEER_CLIENT, PEER_SPAWND, SERVE_BUDGET, RingSet
from procmgr.osutil import watch_doorbell

# Messages taken from one ring per pass, as the core takes them in C:
# fairness between peers (procmgr/manager/core/_core.h).
BATCH = SERVE_BUDGET


def poll(mgr, spawnds=None, clients=None) -> int:
    """One pass over inbound rings: those of the given peers (the event
    loop passes the ones that have something), by default every peer's.
    The number of messages handled."""
    handled = 0
    core = mgr.core
    for sd in list(mgr.spawnds.values()) if spawnds is None else spawnds:
        if not sd.alive:
            continue
        channel = sd.channel
        for msg in channel.receive(BATCH):
            mgr.dispatch_spawnd(sd.core, msg)
            handled += 1
        core.mid_message(PEER_SPAWND, sd.core, channel.decoder.partial)
        core.flush(PEER_SPAWND, sd.core)     # its replies may have made room
        if channel.peer_gone or core.lost(PEER_SPAWND, sd.core):
            channel.peer_gone = True
            mgr.peers_changed += 1     # stop waiting on it; its pidfd says why
            if channel.corrupt:
                _dropped(mgr, channel)
                if mgr.end_spawnd is not None:
                    mgr.end_spawnd(sd.core)     # then its pidfd says it
    for client in list(mgr.clients.values()) if clients is None else clients:
        if not client.alive:
            continue               # gone earlier in this pass
        channel = client.channel
        # Answers that did not fit go first; until they have, read no more.
        if core.flush(PEER_CLIENT, client.id):
            for msg in channel.receive(BATCH):
                mgr.dispatch_client(client.id, msg)
                handled += 1
            core.mid_message(PEER_CLIENT, client.id, channel.decoder.partial)
        if channel.peer_gone or core.lost(PEER_CLIENT, client.id):
            if channel.corrupt:
                _dropped(mgr, channel)
            mgr.client_gone(client)
            channel.close()
    return handled


def _dropped(mgr, channel) -> None:
    """One line for a peer that broke its ring, and one more in the count."""
    mgr.peers_dropped += 1
    print(f"procmgr: {channel.name} dropped: it broke its ring (an impossible index "
          f"or length); everyone else is served", file=sys.stderr, flush=True)


class PeerDoorbell:
    """One peer's doorbell: an eventfd in the loop's epoll set. Closed out
    of the set first: the peer holds a copy of it, which would keep it
    there -- ringing, under a number this process no longer has."""

    __slots__ = ("fd", "_epoll", "_bells", "_watched")

    def __init__(self, epoll: select.epoll, bells: set):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = epoll
        self._bells = bells
        self._watched = False

    def watch(self) -> None:
        """Into the loop's epoll set (a ring before this is not lost: the
        eventfd stays readable)."""
        if not self._watched and self.fd >= 0:
            self._epoll.register(self.fd, select.EPOLLIN)
            self._watched = True
            self._bells.add(self.fd)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._watched:
            try:
                self._epoll.unregister(self.fd)
            except (OSError, ValueError):     # the loop's epoll is closed already
                pass
            self._bells.discard(self.fd)
        os.close(self.fd)
        self.fd = -1


class EventLoop:
    """Runs the manager: wait until a peer's ring has something (RingSet,
    procmgr/manager/core/_loop.c: arm the rings of the peers that rang or
    were busy lately, sleep on the epoll set -- each peer's own doorbell
    (``peer_doorbell``), the shared one, and whatever else was registered
    with ``watch`` -- and serve in C what the core can), run the watchers
    that fired, hand the rings that still have something to ``poll``, then
    wake the peers that were answered.

    A ring that is ready while being armed cancels the sleep, so under load
    the loop goes from pass to pass without sleeping. The sleep is bounded
    (``idle_timeout``) so that ``stop`` is noticed even if nobody rings.
    """

    def __init__(self, mgr):
        self.mgr = mgr
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        watch_doorbell(self._epoll, self.doorbell)
        self._rings = RingSet(self._epoll.fileno(), self.doorbell, mgr.core)
        self._peers_seen = -1           # mgr.peers_changed when _peers was made
        self._spawnds: list = []
        self._peers: list = []          # spawnds, then clients: RingSet's order
        self._watchers: dict[int, object] = {}
        # Every PeerDoorbell's fd. One that rings before its peer is in the
        # RingSet (a client rings as soon as it has attached, and the loop
        # takes the peer in at its next pass) comes back as a plain event:
        # left alone, it is still readable when the RingSet knows it.
        self._bells: set[int] = set()
        self._calls: deque = deque()
        # call_later's timers: (when, order, fn), the soonest first.
        self._timers: list = []
        self._timer_order = itertools.count()
        mgr.loop = self

    @property
    def wakeups(self) -> int:
        """How many times the loop has slept (and woken up)."""
        return self._rings.sleeps

    @property
    def peers_looked_at(self) -> int:
        """Peers the loop looked at, over all its passes."""
        return self._rings.looked

    @property
    def served_in_c(self) -> int:
        """Messages the core served straight from the rings."""
        return self._rings.served

    def call_soon_threadsafe(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop's thread, at its next pass."""
        self._calls.append((fn, args))   # deque.append is atomic
        self._rings.interrupt()

    def call_later(self, delay: float, fn) -> None:
        """Run ``fn()`` on the loop's thread once ``delay`` s have passed
        (at the end of the first pass after; the loop sleeps no longer
        than until then). From the loop's thread only."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_order), fn))

    def _run_due(self) -> None:
        """The timers whose time has come, the supervisor's answers, and
        the events requests waiting (each has a timer while it waits)."""
        timers = self._timers
        if timers:
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                heapq.heappop(timers)[2]()
        if self.mgr.supervisor_started:
            self.mgr.supervisor.pump()
        if self.mgr.event_feed is not None:
            self.mgr.event_feed.deliver()

    def peer_doorbell(self, watch: bool = True) -> PeerDoorbell:
        """A new doorbell for one peer to ring, in the loop's epoll set (or,
        with ``watch=False``, once its ``watch()`` is called: a client's is
        made at the handshake and watched once it has attached): the loop
        then looks at that peer only when it rang (or was busy lately), so
        idle peers cost a pass nothing. The peer's Channel owns it."""
        bell = PeerDoorbell(self._epoll, self._bells)
        if watch:
            bell.watch()
        return bell

    def watch(self, fd: int, callback) -> None:
        """Call ``callback(fd, events)`` from the loop when ``fd`` is readable."""
        self._watchers[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        if self._watchers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _refresh_peers(self) -> None:
        """Peers came or went: the rings to wait on. A spawnd whose channel
        is gone is not waited on (its closed ring would always be ready);
        its pidfd watcher retires it."""
        mgr = self.mgr
        self._spawnds = [sd for sd in mgr.spawnds.values()
                         if sd.alive and not sd.channel.peer_gone]
        self._peers = self._spawnds + list(mgr.clients.values())
        self._rings.set([(p.channel.inbound, p.channel.outbound, PEER_SPAWND, p.core,
                          p.channel.doorbell_fd) for p in self._spawnds] +
                        [(p.channel.inbound, p.channel.outbound, PEER_CLIENT, p.id,
                          p.channel.doorbell_fd) for p in self._peers[len(self._spawnds):]])
        self._peers_seen = mgr.peers_changed

    def run_once(self, idle_timeout: float = 1.0) -> int:
        """One pass: wait (only if no ring is ready) up to ``idle_timeout``,
        handle what came in, wake who was answered. The number handled."""
        while self._calls:
            fn, args = self._calls.popleft()
            fn(*args)
        if self._peers_seen != self.mgr.peers_changed:
            self._refresh_peers()
        peers = self._peers
        timeout = 0 if self._calls else idle_timeout
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
        ready, fired = self._rings.wait(timeout)
        for fd, events in fired:
            if fd not in self._bells:
                self._watchers[fd](fd, events)
        nsd = len(self._spawnds)
        handled = poll(self.mgr, [peers[i] for i in ready if i < nsd],
                       [peers[i] for i in ready if i >= nsd])
        if self._timers or self.mgr.supervisor_started:
            self._run_due()
        # Every peer answered in this pass (or by a watcher) is woken once.
        self._rings.wake()
        return handled

    def run(self, idle_timeout: float = 1.0) -> None:
        """Until ``mgr.stopping`` is set (from a handler or another thread
        that then rings the doorbell)."""
        while not self.mgr.stopping:
            self.run_once(idle_timeout)

    def stop(self) -> None:
        """Ask a running loop to return; safe from another thread."""
        self.mgr.stopping = True
        self._rings.interrupt()

    def close(self) -> None:
        self._epoll.close()
        os.close(self.doorbell)
