"""The domain table and the domain state machine: the states, and the
views Python reads. The table itself, its transitions and every handler
that drives them are C (procmgr/manager/core/: table.c has the state diagram,
core.h says why C).

    NIL --spawn reply ok--> RUNNING --kill/exit--> STOP_PEND --all cores
     |                         ^                      |     stopped--> STOPPED
     |                         +---- every kill failed+                  |
     | spawn failed                                              all cores
     v                                                             cleaned |
   CLEANED <---------------------------------------------------------------+

A domain cap is (id, nonce): ids are handed out in order and never reused;
the 64-bit nonce is random, so a cap cannot be guessed from an id.

A handler that tries an edge the machine does not have is a bug: the core
raises ``procmgr.manager._core.IllegalTransition``, counts it as an internal error
and answers the request INTERNAL. A request answered twice raises
``procmgr.manager._core.AnswerTwice``, which is let through: the exactly-once check
stops the manager rather than let it carry on wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from procmgr.protocol.numbers import EXIT_STATUS_KILLED, State  # noqa: F401 (re-exported)

NIL, RUNNING, STOP_PEND, STOPPED, CLEANED = State


@dataclass(frozen=True, slots=True)
class DomainView:
    """One domain as the table had it when asked: a copy, for queries and
    tests. killers and waiters are (client id, request seq); deferred are
    (op, client id, seq, status, signaled)."""

    id: int
    nonce: int
    state: State
    argv: list[str]
    home_core: int
    cores: list[int]             # every core it ran on, in order
    pids: dict[int, int]         # core -> pid
    live: set[int]               # cores that may still run it
    held: set[int]               # cores holding its resources
    span_pending: set[int]       # spans sent, not yet answered
    exit_status: int | None
    signaled: bool
    killed: bool                 # its stop was a kill's
    started_at: float            # wall clock, s
    ended_at: float | None       # wall clock, s; None while it has not ended
    kills_in_flight: int
    kill_error: tuple[int, int] | None
    killers: list[tuple[int, int]]
    waiters: list[tuple[int, int]]
    deferred: list[tuple]
    spawn_error: tuple[int, int] | None
    # (user CPU us, system CPU us, peak RSS KiB) of its ended dispatchers
    usage: tuple[int, int, int] | None = None

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
        return self.state in (STOPPED, CLEANED)


class TableView:
    """The core's domain table as Python reads it.

    Cleaned domains are kept (a late wait still gets the exit status) up to
    ``history`` of them, oldest dropped first, so memory stays bounded over
    millions of spawns."""

    def __init__(self, core):
        self._core = core

    def __len__(self) -> int:
        """Domains not yet cleaned."""
        return len(self._core)

    @property
    def capacity(self) -> int:
        """Most domains live at once; a spawn beyond is CREATE_DOMAIN_CAP."""
        return self._core.table_capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._core.table_capacity = value

    def full(self) -> bool:
        return len(self) >= self.capacity

    def by_id(self, dom_id: int) -> DomainView | None:
        fields = self._core.domain(dom_id)
        if fields is None:
            return None
        fields["state"] = State(fields["state"])
        for name in ("live", "held", "span_pending"):
            fields[name] = set(fields[name])
        return DomainView(**fields)

    def missing(self, dom_id: int) -> int:
        """The error for an id the table does not hold: DOMAIN_FORGOTTEN
        if it was issued once (ended, and past the history), else
        DOMAIN_TABLE_FIND -- as the core answers it (table.c, missing_domain)."""
        return self._core.missing(dom_id)

    def page(self, start: int, limit: int) -> tuple[list[int], bool]:
        """Up to ``limit`` ids >= ``start`` of domains not yet cleaned, in
        id order, and whether more follow: O(page), not O(table)."""
        return self._core.domain_ids_from(start, limit)

    def ids(self) -> list[int]:
        """Ids of every domain not yet cleaned, in creation order."""
        return self._core.domain_ids()
