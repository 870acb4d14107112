"""The domain table and the domain state machine.

    NIL --spawn reply ok--> RUNNING --kill/exit--> STOP_PEND --all cores
     |                         ^                      |     stopped--> STOPPED
     |                         +---- every kill failed+                  |
     | spawn failed                                              |
     v                                                           | all cores
   CLEANED <------------------------------------------------------ cleaned

An entry exists from the moment a spawn is accepted (state NIL), not from
the spawn reply, so that an exit, kill or wait that overtakes the reply finds
the domain (Barrelfish defect 15). ``running`` counts cores whose dispatcher
has not stopped, ``resources`` cores not yet cleaned up.

A domain cap is (id, nonce): ids are handed out in order and never reused;
the 64-bit nonce is random, so a cap cannot be guessed from an id.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from procmgr.errors import Err

EXIT_STATUS_KILLED = 9


class State(IntEnum):
    NIL = 0
    RUNNING = 1
    STOP_PEND = 2
    STOPPED = 3
    CLEANED = 4


# The states as module-level names, for the code that tests them per
# message: on Python 3.11 reading ``State.RUNNING`` costs ~95 ns (attribute
# reads on an enum class are not specialised), a global ~20 ns.
NIL, RUNNING, STOP_PEND, STOPPED, CLEANED = State
_FINISHED = frozenset((STOPPED, CLEANED))


# The only legal edges; _transition refuses everything else.
_EDGES = {
    NIL: {RUNNING, CLEANED},
    RUNNING: {STOP_PEND},
    # Back to RUNNING only when a kill failed on a core that still runs it:
    # the domain was not stopped, and its own exit must still count.
    STOP_PEND: {STOPPED, RUNNING},
    STOPPED: {CLEANED},
    CLEANED: set(),
}


class IllegalTransition(AssertionError):
    """A handler tried an edge the state machine does not have: a bug."""


@dataclass(slots=True, eq=False)
class Domain:
    id: int
    nonce: int
    argv: list[str]
    home_core: int
    spawn_payload: bytes = b""       # what a span starts again on another core
    state: State = NIL
    cores: list[int] = field(default_factory=list)       # every core it ran on, in order
    pids: dict[int, int] = field(default_factory=dict)   # core -> pid
    live: set[int] = field(default_factory=set)          # cores that may still run it
    held: set[int] = field(default_factory=set)          # cores holding its resources
    span_pending: set[int] = field(default_factory=set)  # spans sent, not yet answered
    exit_status: int | None = None
    signaled: bool = False
    kills_in_flight: int = 0
    kill_error: tuple[int, int] | None = None
    killers: list = field(default_factory=list)   # (client, seq) answered at STOPPED
    waiters: list = field(default_factory=list)   # (client, seq) answered at STOPPED
    deferred: list = field(default_factory=list)  # kill/exit that overtook the spawn reply
    spawn_error: tuple[int, int] | None = None    # (err, status) if the spawn failed

    @property
    def running(self) -> int:
        """Cores whose dispatcher has not been seen to stop (pending spans included)."""
        return len(self.live)

    @property
    def resources(self) -> int:
        """Cores that have not released the domain yet."""
        return len(self.held)

    @property
    def finished(self) -> bool:
        """Stopped or cleaned: a wait is answered at once (defect 8)."""
        return self.state in _FINISHED


class _NonceSource:
    """64-bit cap nonces from the OS's CSPRNG, drawn 512 at a time: one
    getrandom() call per 512 spawns instead of one per spawn."""

    __slots__ = ("_pool", "_next")
    _BATCH = 512

    def __init__(self):
        self._pool: list[int] = []
        self._next = 0

    def next(self) -> int:
        if self._next == len(self._pool):
            self._pool = np.frombuffer(secrets.token_bytes(8 * self._BATCH), "<u8").tolist()
            self._next = 0
        nonce = self._pool[self._next]
        self._next += 1
        return nonce


def _transition(dom: Domain, to: State) -> None:
    if to not in _EDGES[dom.state]:
        raise IllegalTransition(
            f"domain {dom.id}: {dom.state.name} -> {to.name} is not a legal transition")
    dom.state = to


class DomainTable:
    """Every domain this manager has spawned, by id.

    Cleaned domains are kept (a late wait still gets the exit status) up to
    ``history`` of them, oldest dropped first, so memory stays bounded over
    millions of spawns.

    Counting is by sets of cores, not bare counters: a core's stop or cleanup
    counts once however many messages report it (a kill reply and the
    dispatcher's own exit racing, Barrelfish defects 10 and 11).
    """

    def __init__(self, capacity: int = 1 << 20, history: int = 4096):
        self._live: dict[int, Domain] = {}
        self._cleaned: OrderedDict[int, Domain] = OrderedDict()
        self._next_id = 1
        self._nonces = _NonceSource()
        self.capacity = capacity
        self.history = history

    def __len__(self) -> int:
        return len(self._live)

    def full(self) -> bool:
        return len(self._live) >= self.capacity

    def create(self, argv: list[str], core: int, spawn_payload: bytes = b"") -> Domain:
        """A new NIL entry with a fresh cap (the caller checked ``full``)."""
        dom = Domain(self._next_id, self._nonces.next(), list(argv), core, spawn_payload)
        self._next_id += 1
        self._live[dom.id] = dom
        return dom

    def lookup(self, dom_id: int, nonce: int) -> Domain | Err:
        """The domain a cap names, or the error to answer."""
        dom = self.by_id(dom_id)
        if dom is None:
            return Err.DOMAIN_TABLE_FIND
        if dom.nonce != nonce:
            return Err.BAD_CAP
        return dom

    def by_id(self, dom_id: int) -> Domain | None:
        """For queries and internal lookups: by id alone."""
        dom = self._live.get(dom_id)
        return dom if dom is not None else self._cleaned.get(dom_id)

    def ids(self) -> list[int]:
        """Ids of every domain not yet cleaned, in creation order."""
        return list(self._live)

    # ---- the transitions, each in one place ----

    def dispatcher_started(self, dom: Domain, core: int, pid: int) -> None:
        """A spawn or span reply: a dispatcher of ``dom`` runs on ``core``."""
        if dom.state == NIL:
            _transition(dom, RUNNING)
        dom.cores.append(core)
        dom.pids[core] = pid
        dom.live.add(core)
        dom.held.add(core)

    def dispatcher_stopped(self, dom: Domain, core: int) -> bool:
        """``core``'s dispatcher is gone; False if that was already counted."""
        if core not in dom.live:
            return False
        dom.live.discard(core)
        return True

    def stop_requested(self, dom: Domain, status: int, signaled: bool = False) -> None:
        """kill or exit accepted: RUNNING -> STOP_PEND, status recorded once."""
        _transition(dom, STOP_PEND)
        dom.exit_status = status
        dom.signaled = signaled

    def stop_failed(self, dom: Domain) -> None:
        """STOP_PEND -> RUNNING: the kill failed where the domain still runs."""
        _transition(dom, RUNNING)
        dom.exit_status = None
        dom.signaled = False

    def stopped(self, dom: Domain) -> None:
        """STOP_PEND -> STOPPED, once no core runs the domain."""
        if dom.live:
            raise IllegalTransition(f"domain {dom.id}: STOPPED while cores {sorted(dom.live)} run")
        _transition(dom, STOPPED)

    def dispatcher_released(self, dom: Domain, core: int) -> None:
        """``core`` released the domain as its dispatcher stopped (the
        worker said so: Flag.RELEASED); no SD_CLEANUP will be sent there.
        Retiring waits for STOPPED (maybe_stopped), as after a cleanup."""
        dom.held.discard(core)

    def dispatcher_cleaned(self, dom: Domain, core: int) -> bool:
        """``core`` released the domain; True when that made it CLEANED."""
        dom.held.discard(core)
        if not dom.held and dom.state == STOPPED:
            self._retire(dom)
            return True
        return False

    def spawn_failed(self, dom: Domain, err: int, status: int) -> None:
        """The spawn never produced a dispatcher: NIL -> CLEANED, error kept."""
        dom.spawn_error = (err, status)
        self._retire(dom)

    def _retire(self, dom: Domain) -> None:
        _transition(dom, CLEANED)
        del self._live[dom.id]
        self._cleaned[dom.id] = dom
        while len(self._cleaned) > self.history:
            self._cleaned.popitem(last=False)
