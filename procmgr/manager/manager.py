"""The process manager's bindings, and the way into its core.

Single-threaded: one event loop (loop.py) serves one-slot messages in C
straight from the rings, and ``poll`` hands the rest (decoded in Python)
to the core (procmgr/manager/core/, mapped in its README.md), which keeps
the domain table and runs one handler per message to completion. The few
requests answered in Python (handlers.py) the core records and hands back
(``dispatch_client``). Python drives the core; the core never calls Python.

Exactly-once answers are enforced in the core, not hoped for: every request
a client sends is recorded as outstanding when it arrives, and answering
removes it; answering twice, or a request never received, is a bug and
raises AnswerTwice at once.
"""

from __future__ import annotations

import traceback

from procmgr.errors import Err
from procmgr.manager._core import PEER_CLIENT, PEER_SPAWND, AnswerTwice, Core
from procmgr.manager.channel import Channel
from procmgr.manager.domain import TableView
from procmgr.protocol import Decoder, HeldBytes, Msg, ProtocolError


class ClientBinding:
    """One client's ring pair; what it is owed is kept by the core."""

    __slots__ = ("id", "channel", "is_monitor", "alive", "_core")

    def __init__(self, client_id: int, channel: Channel, is_monitor: bool, core: Core):
        self.id = client_id
        self.channel = channel
        self.is_monitor = is_monitor
        self.alive = True
        self._core = core

    def _figures(self) -> tuple[int, int, set[int], int]:
        return self._core.client(self.id) or (0, 0, set(), 0)

    @property
    def outstanding(self) -> set[int]:
        """Seqs of its requests not yet answered (a copy)."""
        return self._figures()[2]

    @property
    def received(self) -> int:
        return self._figures()[0]

    @property
    def answered(self) -> int:
        return self._figures()[1]

    @property
    def backlog(self) -> int:
        """Answers waiting for room in its ring."""
        return self._figures()[3]

    def __repr__(self) -> str:
        return f"<client {self.id}{' monitor' if self.is_monitor else ''}>"


class SpawndBinding:
    """One spawnd worker's ring pair; its send queue, sequence numbers and
    pending structure (reply queue or hashtable, pending.py) are the core's."""

    __slots__ = ("core", "channel", "alive", "_core")

    def __init__(self, core: int, channel: Channel, mgr_core: Core):
        self.core = core
        self.channel = channel
        self.alive = True
        self._core = mgr_core

    def _figures(self) -> dict:
        figures = self._core.spawnd(self.core)
        if figures is None:
            raise LookupError(f"spawnd.{self.core} is gone")
        return figures

    @property
    def pending(self):
        """The pending structure: requests sent and not yet answered."""
        return self._figures()["pending"]

    @property
    def queued(self) -> int:
        """Requests waiting in the send queue."""
        return self._figures()["queued"]

    sendq = queued

    @property
    def sent(self) -> int:
        return self._figures()["sent"]

    @property
    def replies(self) -> int:
        return self._figures()["replies"]

    @property
    def protocol_errors(self) -> int:
        return self._figures()["protocol_errors"]

    @property
    def backlog(self) -> int:
        """Requests in the ring's overflow: sent, waiting for room."""
        return self._figures()["backlog"]

    @property
    def next_seq(self) -> int:
        return self._figures()["next_seq"]

    @next_seq.setter
    def next_seq(self, seq: int) -> None:
        self._core.set_next_seq(self.core, seq)

    def __repr__(self) -> str:
        return f"<spawnd {self.core}>"


# The bytes of long spawns the manager holds half received, over all its
# clients (messages.py, HeldBytes): some thirty at their largest at once; a
# long spawn past it is answered BUSY.
LONG_HELD_LIMIT = 64 << 20


class Manager:
    def __init__(self, pending: str = "replyq", reply_queue: int = 1024,
                 max_cores: int = 1024, table_capacity: int = 1 << 20, history: int = 4096,
                 long_held_limit: int = LONG_HELD_LIMIT, events: int = 8192):
        """``history``: how many ended domains are remembered, for a late
        wait or status; ``events``: how many of the newest events are kept
        for clients to ask for (events.py)."""
        self.long_held = HeldBytes(long_held_limit)
        self.loop = None                 # the EventLoop serving it (it says so)
        self._supervisor = None          # made at the first program request
        self.event_feed = None           # made at the first events request
        self.pending_kind = pending
        self.reply_queue = reply_queue
        self.max_cores = max_cores
        # A bad kind or size is said now.
        self.core = Core(pending=pending, reply_queue=reply_queue, max_cores=max_cores,
                         table_capacity=table_capacity, history=history, events=events)
        self.table = TableView(self.core)
        self.spawnds: dict[int, SpawndBinding] = {}
        self.clients: dict[int, ClientBinding] = {}
        self._next_client = 1
        # Counts every change to who the manager waits on (a client or spawnd
        # added or gone): the event loop re-reads the peers when it moves.
        self.peers_changed = 0
        self.stopping = False
        # Set by the manager process: starts a worker for a core (add_spawnd
        # with no ring names). None when the manager runs in-process.
        self.start_spawnd = None
        # Set by the manager process: ends the worker of a core whose ring
        # broke (its death is then handled as any other). None in-process.
        self.end_spawnd = None
        # Peers dropped because they broke their rings (procmgr/manager/channel.py).
        self.peers_dropped = 0
        # core -> worker pid, for monitoring; empty when the manager runs in-process.
        self.worker_pids = dict

    @property
    def protocol_errors(self) -> int:
        return self.core.protocol_errors

    @property
    def internal_errors(self) -> int:
        return self.core.internal_errors

    @property
    def answered_gone(self) -> int:
        return self.core.answered_gone

    # ---- bindings ----

    @property
    def supervisor_started(self) -> bool:
        return self._supervisor is not None

    @property
    def supervisor(self):
        """The supervised programs (supervisor.py), made when first asked
        for: a runtime that supervises nothing pays nothing for it."""
        if self._supervisor is None:
            from procmgr.manager.supervisor import start_supervisor
            self._supervisor = start_supervisor(self, self.loop)
        return self._supervisor

    @property
    def events(self):
        """The clients' events requests (events.py), made when first asked
        for; the core records the events themselves from the start."""
        if self.event_feed is None:
            from procmgr.manager.events import EventFeed
            self.event_feed = EventFeed(self, self.loop.call_later)
        return self.event_feed

    def add_client(self, channel: Channel, is_monitor: bool = False) -> ClientBinding:
        # Before anything is read from it: its long messages share the bound.
        channel.decoder = Decoder(self.long_held)
        client = ClientBinding(self._next_client, channel, is_monitor, self.core)
        self._next_client += 1
        self.core.add_client(client.id, channel.outbound, is_monitor)
        self.clients[client.id] = client
        self.peers_changed += 1
        return client

    def add_spawnd(self, core: int, channel: Channel) -> Err:
        err = Err(self.core.add_spawnd(core, channel.outbound))
        if err == Err.OK:
            self.spawnds[core] = SpawndBinding(core, channel, self.core)
            self.peers_changed += 1
        return err

    # ---- what Python decoded, into the core; the requests Python answers ----

    def dispatch_client(self, client_id: int, msg) -> None:
        """One message Python decoded from a client (a Msg or a
        ProtocolError): into the core, which handles it or, for the few
        requests Python answers (handlers.py), records it and says so."""
        if type(msg) is not Msg:
            self.core.undecodable(PEER_CLIENT, client_id, msg.op, msg.seq, int(msg.code),
                                  msg.detail)
        elif self.core.dispatch_client(client_id, msg):
            self._python_request(client_id, msg)

    def dispatch_spawnd(self, core: int, msg) -> None:
        """One message Python decoded from a spawnd (a Msg or a ProtocolError)."""
        if type(msg) is not Msg:
            self.core.undecodable(PEER_SPAWND, core)
        else:
            self.core.dispatch_spawnd(core, msg)

    def _python_request(self, client_id: int, msg: Msg) -> None:
        """A bug in a handler must not take the manager, and everyone else's
        answers, down: it is printed and counted, and the request answered
        INTERNAL if it still waits. AnswerTwice, the exactly-once check
        itself, and KeyboardInterrupt or SystemExit go on up."""
        from procmgr.manager.handlers import PYTHON_HANDLERS

        try:
            PYTHON_HANDLERS[msg.op](self, self.clients[client_id], msg)
        except AnswerTwice:
            raise
        except Exception:
            traceback.print_exc()
            self.core.handler_failed(client_id, msg.op, msg.seq)

    def answer(self, client: ClientBinding, request: Msg, err: int = Err.OK,
               status: int = 0, flags: int = 0, **fields) -> None:
        """Answer one request, exactly once, with its own domain, nonce and
        core unless given (a dead client's answer is dropped)."""
        self.core.answer(client.id, request.op, request.seq, int(err), status, flags,
                         dom=fields.pop("dom", request.dom),
                         nonce=fields.pop("nonce", request.nonce),
                         core=fields.pop("core", request.core), **fields)

    def fail(self, client: ClientBinding, request: Msg, error: ProtocolError) -> None:
        self.answer(client, request, error.code, payload=error.detail.encode()[:256])

    # ---- lifecycle of peers ----

    def client_gone(self, client: ClientBinding) -> None:
        """The client died or disconnected: drop what waits for it."""
        client.alive = False
        self.clients.pop(client.id, None)
        self.peers_changed += 1
        self.core.client_gone(client.id)
        if self._supervisor is not None:
            self._supervisor.client_gone(client)    # what it waited on, forgotten
        if self.event_feed is not None:
            self.event_feed.client_gone(client)

    def spawnd_died(self, core: int) -> None:
        """The worker of ``core`` is gone: fail what waited on it, its domains
        lost their dispatchers there. A new worker may then take the core."""
        sd = self.spawnds.pop(core, None)
        if sd is None:
            return
        sd.alive = False
        self.peers_changed += 1
        self.core.spawnd_died(core)
        sd.channel.close()
