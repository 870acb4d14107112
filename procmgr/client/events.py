"""Events: what happened to domains and programs, as it happens
(``Client.events``, ``AsyncClient.events``, ``procmgr events``).

The manager keeps the newest events in one log, numbered in the order
they happened (procmgr/manager/events.py says how it serves them); a
client asks for those after the last it saw, and the manager answers at
once if there are some, or when the next comes. What a consumer gets:

- every event at least once and in order; ``after=`` the ``seq`` of the
  last one it handled takes a consumer that stopped (or a new process)
  on from there, while the manager still keeps them;
- if it fell further behind than the manager keeps, one ``Event`` of
  kind "lost" saying how many it missed, then the oldest still kept: a
  slow consumer never holds the manager up, it is told what it lost;
- every domain's events and every program's, as ``domains()`` lists
  every domain: a domain is named by its id (``status(id)`` says more),
  never by its cap.

Kinds. A domain's: "spawned" (``pid``, ``core``), "exited" (by itself;
``returncode`` as ``wait`` says it: the code, or -N for a signal N),
"killed" (a kill ended it; ``returncode`` 9) -- these two with what
the domain used, as ``status`` gives it (``cpu_user``, ``cpu_system``,
``max_rss``) -- "spawn_failed" (``error`` says why). A supervised program's (``program`` is its name, ``restarts``
its count; ``domain`` its incarnation's id): "started", "restarted" (an
incarnation runs, after a start or an end; with ``error`` and no domain
when its spawn failed -- each restart counted is one), "backoff" (it ended and
waits to start again), "stopped" (by a user), "finished" (it ended and
its policy says not to start it again: state EXITED), "given_up" (FATAL;
``error`` when the last start failed), "removed". A supervised
incarnation's start and end are domain events as well, and come first:
a program's "started" may follow its incarnation's "exited" when that
ended at once.

Seqs are the runtime's since its manager started: a consumer resuming
with ``after=`` against a runtime started again (a new manager) is not
told what the old one did before it went.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from procmgr.errors import describe
from procmgr.protocol import EVENTS_FROM_NOW, EVENTS_WAIT_MAX_MS, EventKind, Flag

# How long one request waits for an event at most: an iterator given up
# leaves its request waiting in the manager this long at most.
POLL_WAIT = 5.0

KINDS = tuple(k.name.lower() for k in EventKind) + ("lost",)
_PROGRAM_KINDS = frozenset(k for k in EventKind if k >= EventKind.STARTED)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened (the module's text lists the kinds).
    ``time`` is the wall clock (epoch s); fields a kind does not have are
    None. A "lost" event says ``lost`` events before ``seq`` are gone."""

    seq: int
    kind: str
    time: float
    domain: int | None = None
    core: int | None = None
    pid: int | None = None
    returncode: int | None = None
    program: str | None = None
    restarts: int | None = None
    error: str | None = None
    cpu_user: float | None = None      # s; an end's, as DomainInfo's
    cpu_system: float | None = None    # s
    max_rss: int | None = None         # bytes
    lost: int = 0

    def as_dict(self) -> dict:
        """The fields that are set, for JSON (``procmgr events --json``)."""
        return {k: v for k in self.__slots__
                if (v := getattr(self, k)) is not None and (k != "lost" or v)}


def _event_of(record) -> Event:
    try:
        kind = EventKind(record.kind)
    except ValueError:
        return Event(record.seq, f"unknown({record.kind})", record.time, record.dom or None)
    common = dict(seq=record.seq, kind=kind.name.lower(), time=record.time,
                  domain=record.dom or None, core=record.core, pid=record.pid or None)
    if kind in _PROGRAM_KINDS:
        error = describe(record.err) if record.err else None
        return Event(**common, program=record.name, restarts=record.status, error=error)
    if kind == EventKind.SPAWN_FAILED:
        return Event(**common, error=describe(record.err, record.status))
    if kind == EventKind.SPAWNED:
        return Event(**common)
    code = -record.status if record.flags & Flag.SIGNALED else record.status
    return Event(**common, returncode=code, **usage_fields(record.usage))


def usage_fields(usage: tuple[int, int, int] | None) -> dict:
    """A domain's usage as the wire carries it (user us, system us, peak
    RSS KiB; 0: unknown) in the words of DomainInfo and Event: seconds
    and bytes. Nothing for none."""
    if usage is None:
        return {}
    user, system, rss = usage
    return dict(cpu_user=user / 1e6, cpu_system=system / 1e6, max_rss=rss * 1024 or None)


class EventCursor:
    """Where a consumer is in the log, and what it asks next: shared by
    the sync and async iterations. ``after``: the seq of the last event
    seen (None: from now on; 0: everything the manager still keeps)."""

    def __init__(self, after: int | None = None, timeout: float | None = None, kinds=None):
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)
                                  or not 0 <= after < EVENTS_FROM_NOW):
            raise ValueError(f"after is the seq of an event (a whole number from 0), "
                             f"not {after!r}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout is a number of seconds from 0, not {timeout!r}")
        self.after = EVENTS_FROM_NOW if after is None else after
        self.timeout = timeout
        self.kinds = check_kinds(kinds)
        self._quiet_since = time.monotonic()
        self._caught_up = False         # the last answer had no event: nothing more yet

    def wait_ms(self) -> int:
        """The next request's wait for an event, in ms; TimeoutError when
        ``timeout`` has passed without one and the last answer said there
        is none (so timeout=0 takes what there is, then stops)."""
        wait = POLL_WAIT
        if self.timeout is not None:
            left = self.timeout - (time.monotonic() - self._quiet_since)
            if left <= 0 and self._caught_up:
                raise TimeoutError(f"no event within {self.timeout} s")
            wait = min(wait, max(left, 0.0))
        return min(round(wait * 1000), EVENTS_WAIT_MAX_MS)

    def take(self, batch: tuple[int, int, list]) -> list[Event]:
        """An answer's events of the kinds asked for, and the cursor past
        them all; the timeout counts from the last event yielded."""
        first, lost, records = batch
        events = []
        self._caught_up = not records
        if lost:
            events.append(Event(first, "lost", time.time(), lost=lost))
        events += [_event_of(r) for r in records]
        self.after = first - 1 + len(records)
        if self.kinds is not None:
            events = [e for e in events if e.kind in self.kinds]
        if events:
            self._quiet_since = time.monotonic()
        return events


def check_kinds(kinds) -> frozenset[str] | None:
    """A ``kinds=`` filter, checked: None (all), or names from KINDS
    ("lost" is always let through: a filter does not hide a loss)."""
    if kinds is None:
        return None
    kinds = frozenset([kinds] if isinstance(kinds, str) else kinds)
    if not kinds:
        raise ValueError(f"kinds names at least one kind (known: {', '.join(KINDS)})")
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise ValueError(f"unknown event kind {unknown[0]!r} (known: {', '.join(KINDS)})")
    return kinds | {"lost"}

