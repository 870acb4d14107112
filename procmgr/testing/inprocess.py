"""The whole control plane in one process: manager, simulated spawnds and
clients on real rings.

For unit and regression tests of the manager's behaviour, and for
measuring the control plane alone. Dispatchers are simulated (no processes).

The manager is served by its own event loop (procmgr/manager/loop.py), the
path production takes: one-slot messages are handled by the core in C
straight from the rings, the rest by Python. By default nothing runs until
``pump`` turns the loop (without sleeping) and the spawnds in turn, or
``run_manager`` turns the loop alone; with ``threads=True`` the loop and
each simulated spawnd run in threads, and clients block on their rings as
they would in another process.
"""

from __future__ import annotations

import threading

from procmgr.client.client import Client
from procmgr.manager.channel import Channel
from procmgr.manager.loop import EventLoop
from procmgr.manager.manager import Manager
from procmgr.testing.simulated import SimulatedSpawnd
from ringbuf import Ring, unique_name


class InProcessRuntime:
    def __init__(self, cores: int = 2, pending: str = "replyq", reply_queue: int = 1024,
                 ring_capacity: int = 4096, prefix: str = "procmgr-inproc",
                 threads: bool = False, releases: bool = False, events: int = 8192):
        """``releases``: the simulated spawnds release a domain as its
        dispatcher stops, as the real worker does (Flag.RELEASED); by
        default they hold it until SD_CLEANUP, as Barrelfish's spawnd did."""
        self.prefix = prefix
        self.releases = releases
        self.ring_capacity = ring_capacity
        self._rings: list[Ring] = []
        self.manager = Manager(pending=pending, reply_queue=reply_queue, events=events)
        self.spawnds: dict[int, SimulatedSpawnd] = {}
        self.loop = EventLoop(self.manager)
        self.threads = threads
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        if threads:
            self._start(self.loop.run, "manager")
        self.monitor = self.client(monitor=True)
        for core in range(cores):
            self.add_spawnd(core)

    def _start(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _doorbell(self, *peer_ends: Ring) -> None:
        """Give the manager's peers its doorbell (threads mode)."""
        if self.threads:
            for ring in peer_ends:
                ring.set_doorbell(self.loop.doorbell)

    def _pair(self) -> tuple[Ring, Ring]:
        """A ring and its other end, both in this process; names unlinked at once."""
        ring = Ring.create(unique_name(self.prefix), self.ring_capacity)
        other = Ring.attach(ring.name)
        ring.unlink()
        self._rings += [ring, other]
        return ring, other

    def client(self, monitor: bool = False) -> Client:
        req_prod, req_cons = self._pair()
        resp_prod, resp_cons = self._pair()
        doorbell = None
        if self.threads:        # its own, as the manager process gives a client
            doorbell = self.loop.peer_doorbell()
            req_prod.set_doorbell(doorbell.fd)
            resp_cons.set_doorbell(doorbell.fd)
        channel = Channel(req_cons, resp_prod, doorbell=doorbell)
        if not self.threads:
            self.manager.add_client(channel, is_monitor=monitor)
            return Client(req_prod, resp_cons, pump=self.pump)
        # The loop thread owns the manager: hand the binding over through it.
        self.loop.call_soon_threadsafe(self.manager.add_client, channel, monitor)
        return Client(req_prod, resp_cons)

    def add_spawnd(self, core: int) -> SimulatedSpawnd:
        """Start a simulated worker and register it the way the monitor does."""
        req = Ring.create(unique_name(self.prefix), self.ring_capacity)
        rep = Ring.create(unique_name(self.prefix), self.ring_capacity)
        self._rings += [req, rep]
        self.monitor.add_spawnd(core, req.name, rep.name)
        # The manager has both mapped now: the names can go.
        req.unlink()
        rep.unlink()
        sd = SimulatedSpawnd(core, req, rep)
        sd.releases = self.releases
        self._doorbell(req, rep)
        self.spawnds[core] = sd
        if self.threads:
            self._start(sd.serve, f"spawnd.{core}", self._stop)
        return sd

    def run_manager(self) -> int:
        """One pass of the manager's loop, without sleeping: the messages it
        handled (in C and in Python). The spawnds do not run."""
        assert not self.threads, "the loop runs in its own thread"
        before = self.loop.served_in_c
        handled = self.loop.run_once(idle_timeout=0)
        return handled + self.loop.served_in_c - before

    def pump(self, rounds: int = 1000) -> None:
        """Run manager and workers until nobody has anything left to do."""
        for _ in range(rounds):
            moved = self.run_manager()
            for sd in self.spawnds.values():
                moved += sd.step()
            if not moved:
                return
        raise AssertionError(f"control plane still busy after {rounds} rounds")

    def close(self) -> None:
        if self.threads:
            self._stop.set()
            self.loop.stop()
            for t in self._threads:
                t.join(timeout=5)
        self.loop.close()
        for ring in self._rings:
            ring.close()
            ring.unlink()
        for sd in self.manager.spawnds.values():
            sd.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
