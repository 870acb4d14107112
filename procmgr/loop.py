"""The manager's event loop, and nothing else.

``poll`` drains every inbound ring once (spawnd replies first: they free
reply-queue slots and answer clients), running each message's handler to
completion. ``run`` repeats it, sleeping when a pass found nothing.
"""

from __future__ import annotations

import os
import select
from collections import deque

from procmgr.handlers import dispatch_client, dispatch_spawnd
from procmgr.osutil import watch_doorbell
from ringbuf import Ring

BATCH = 64  # messages taken from one ring per pass: fairness between peers


def poll(mgr) -> int:
    """One pass over all inbound rings; the number of messages handled."""
    handled = 0
    for sd in list(mgr.spawnds.values()):
        if not sd.alive:
            continue
        for msg in sd.channel.receive(BATCH):
            dispatch_spawnd(mgr, sd, msg)
            handled += 1
        sd.flush()
    for client in list(mgr.clients.values()):
        channel = client.channel
        if channel.flush():   # else its answers do not fit: read no more until it catches up
            for msg in channel.receive(BATCH):
                dispatch_client(mgr, client, msg)
                handled += 1
        if channel.peer_gone:
            mgr.client_gone(client)
            channel.close()
    return handled


class EventLoop:
    """Runs the manager: drain the rings, and when a pass finds nothing,
    sleep on one doorbell (an eventfd every peer was given) plus whatever
    other descriptors were registered with ``watch`` (sockets, pidfds).

    Before sleeping every inbound ring is armed (ringbuf's ``arm``), so a
    peer that pushes afterwards rings the doorbell; a ring that turns out
    ready while being armed cancels the sleep. The sleep is bounded
    (``idle_timeout``) so that ``stop`` is noticed even if nobody rings.
    """

    def __init__(self, mgr):
        self.mgr = mgr
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        watch_doorbell(self._epoll, self.doorbell)
        self._watchers: dict[int, object] = {}
        self._calls: deque = deque()
        self.wakeups = 0

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

    def _waits(self) -> list[tuple[Ring, bool]]:
        """(ring, for_space): what the manager waits for from each peer."""
        channels = [sd.channel for sd in self.mgr.spawnds.values()
                    if sd.alive and not sd.channel.peer_gone]
        channels += [c.channel for c in self.mgr.clients.values()]
        # A peer whose answers do not fit is not read from (poll): wait for
        # it to make room, not for its requests, which may already be
        # waiting -- armed for them, the loop would never sleep.
        return [(ch.outbound, True) if ch.backlog else (ch.inbound, False) for ch in channels]

    @staticmethod
    def _armed(waits) -> list | None:
        """Arm every ring the manager waits on; None if one is ready already."""
        armed = []
        for ring, for_space in waits:
            if ring.arm(for_space):
                for r, s in armed:
                    r.disarm(s)
                return None
            armed.append((ring, for_space))
        return armed

    def _wake_peers(self) -> None:
        """Wake every peer for what this pass sent it: the manager's rings
        batch their wakes (Channel), so nobody is woken per message."""
        for sd in self.mgr.spawnds.values():
            sd.channel.wake_peer()
        for client in self.mgr.clients.values():
            client.channel.wake_peer()

    def run_once(self, idle_timeout: float = 1.0) -> int:
        """One pass over the rings; if it found nothing, sleep until a peer
        rings or a watched descriptor is ready. The number handled."""
        while self._calls:
            fn, args = self._calls.popleft()
            fn(*args)
        handled = poll(self.mgr)
        self._wake_peers()
        if handled:
            # Another pass before sleeping: under load more has come in by
            # now. (Arming straight away saved that pass when idle, but cost
            # 4-7% of the pipelined control plane, measured A/B in one run.)
            return handled
        armed = self._armed(self._waits())
        if armed is None or self._calls:
            for ring, for_space in armed or ():
                ring.disarm(for_space)
            return 0
        try:
            events = self._epoll.poll(idle_timeout)
        except InterruptedError:
            events = []
        finally:
            for ring, for_space in armed:
                ring.disarm(for_space)
        self.wakeups += 1
        watched = False
        for fd, ev in events:
            if fd != self.doorbell:        # the doorbell is only a wake-up
                self._watchers[fd](fd, ev)
                watched = True
        if watched:
            self._wake_peers()   # a watcher (a death, a new client) may have sent
        return 0

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
