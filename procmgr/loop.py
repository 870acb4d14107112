"""The manager's event loop, and nothing else.

``poll`` drains inbound rings once (spawnd replies first: they free
reply-queue slots and answer clients), running each message's handler to
completion. ``EventLoop`` repeats it for the rings that have something,
sleeping when none has.
"""

from __future__ import annotations

import os
import select
from collections import deque

from procmgr._loop import RingSet
from procmgr.handlers import dispatch_client, dispatch_spawnd
from procmgr.osutil import watch_doorbell

BATCH = 64  # messages taken from one ring per pass: fairness between peers


def poll(mgr, spawnds=None, clients=None) -> int:
    """One pass over inbound rings: those of the given peers (the event
    loop passes the ones that have something), by default every peer's.
    The number of messages handled."""
    handled = 0
    for sd in list(mgr.spawnds.values()) if spawnds is None else spawnds:
        if not sd.alive:
            continue
        channel = sd.channel
        for msg in channel.receive(BATCH):
            dispatch_spawnd(mgr, sd, msg)
            handled += 1
        if sd.sendq or channel.backlog:     # its replies may have made room
            sd.flush()
        if channel.peer_gone:
            mgr.peers_changed += 1     # stop waiting on it; its pidfd says why
    for client in list(mgr.clients.values()) if clients is None else clients:
        if not client.alive:
            continue               # gone earlier in this pass
        channel = client.channel
        # Answers that did not fit go first; until they have, read no more.
        if not channel.backlog or channel.flush():
            for msg in channel.receive(BATCH):
                dispatch_client(mgr, client, msg)
                handled += 1
        if channel.peer_gone:
            mgr.client_gone(client)
            channel.close()
    return handled


class EventLoop:
    """Runs the manager: wait until a peer's ring has something (RingSet,
    procmgr/_loop.c: arm every inbound ring, sleep on one doorbell -- an
    eventfd every peer was given -- plus whatever other descriptors were
    registered with ``watch``, disarm), run the watchers that fired, drain
    the rings that are ready, then wake the peers that were answered.

    A ring that is ready while being armed cancels the sleep, so under load
    the loop goes from pass to pass without sleeping. The sleep is bounded
    (``idle_timeout``) so that ``stop`` is noticed even if nobody rings.
    """

    def __init__(self, mgr):
        self.mgr = mgr
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        watch_doorbell(self._epoll, self.doorbell)
        self._rings = RingSet(self._epoll.fileno(), self.doorbell)
        self._peers_seen = -1           # mgr.peers_changed when _peers was made
        self._spawnds: list = []
        self._peers: list = []          # spawnds, then clients: RingSet's order
        self._watchers: dict[int, object] = {}
        self._calls: deque = deque()

    @property
    def wakeups(self) -> int:
        """How many times the loop has slept (and woken up)."""
        return self._rings.sleeps

    def call_soon_threadsafe(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop's thread, at its next pass."""
        self._calls.append((fn, args))   # deque.append is atomic
        os.eventfd_write(self.doorbell, 1)

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
        self._rings.set([(p.channel.inbound, p.channel.outbound) for p in self._peers])
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
        # A peer whose answers do not fit is not read from (poll): wait for
        # it to make room, not for its requests, which may already be
        # waiting -- armed for them, the loop would never sleep.
        space = [i for i, p in enumerate(peers) if p.channel.backlog]
        ready, fired = self._rings.wait(0 if self._calls else idle_timeout, space)
        for fd, events in fired:
            self._watchers[fd](fd, events)
        nsd = len(self._spawnds)
        handled = poll(self.mgr, [peers[i] for i in ready if i < nsd],
                       [peers[i] for i in ready if i >= nsd])
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
        os.eventfd_write(self.doorbell, 1)

    def close(self) -> None:
        self._epoll.close()
        os.close(self.doorbell)
