"""The process manager's state and the few operations every handler shares.

Single-threaded: one event loop (loop.py) calls ``poll`` which drains the
inbound rings and runs one handler (handlers.py) per message to completion.

Exactly-once answers are enforced here, not hoped for: every request a
client sends is recorded as outstanding when it arrives, and ``answer``
removes it; answering twice, or a request never received, is a bug and
raises at once.
"""

from __future__ import annotations

from procmgr.channel import Channel
from procmgr.domain import RUNNING, STOP_PEND, STOPPED, Domain, DomainTable
from procmgr.errors import Err
from procmgr.protocol import Flag, Msg, Op, ProtocolError
from procmgr.spawnd_state import SpawndState


class ClientBinding:
    """One client's ring pair, and what it is still owed."""

    __slots__ = ("id", "channel", "is_monitor", "alive", "outstanding", "received", "answered")

    def __init__(self, client_id: int, channel: Channel, is_monitor: bool):
        self.id = client_id
        self.channel = channel
        self.is_monitor = is_monitor
        self.alive = True
        self.outstanding: set[int] = set()  # request seqs not yet answered
        self.received = 0
        self.answered = 0

    def __repr__(self) -> str:
        return f"<client {self.id}{' monitor' if self.is_monitor else ''}>"


class AnswerTwice(AssertionError):
    """A request was answered twice or answered without being received."""


class Manager:
    def __init__(self, pending: str = "replyq", reply_queue: int = 1024,
                 max_cores: int = 1024, table_capacity: int = 1 << 20):
        self.pending_kind = pending
        self.reply_queue = reply_queue
        self.max_cores = max_cores
        self.table = DomainTable(table_capacity)
        self.spawnds: dict[int, SpawndState] = {}
        self.clients: dict[int, ClientBinding] = {}
        self._next_client = 1
        # Counts every change to who the manager waits on (a client or spawnd
        # added or gone): the event loop re-reads the peers when it moves.
        self.peers_changed = 0
        self.protocol_errors = 0
        self.internal_errors = 0
        self.stopping = False
        # Set by the manager process: starts a worker for a core (add_spawnd
        # with no ring names). None when the manager runs in-process.
        self.start_spawnd = None
        # core -> worker pid, for monitoring; empty when the manager runs in-process.
        self.worker_pids = dict
        self.answered_gone = 0   # answers counted for clients since gone

    # ---- bindings ----

    def add_client(self, channel: Channel, is_monitor: bool = False) -> ClientBinding:
        client = ClientBinding(self._next_client, channel, is_monitor)
        self._next_client += 1
        self.clients[client.id] = client
        self.peers_changed += 1
        return client

    def add_spawnd(self, core: int, channel: Channel) -> Err:
        if not 0 <= core < self.max_cores:
            return Err.INVALID_SPAWND
        if core in self.spawnds:
            return Err.SPAWND_EXISTS
        self.spawnds[core] = SpawndState(core, channel, self.pending_kind, self.reply_queue)
        self.peers_changed += 1
        return Err.OK

    def spawnd(self, core: int) -> SpawndState | None:
        sd = self.spawnds.get(core)
        return sd if sd is not None and sd.alive else None

    # ---- answering ----

    def answer(self, client: ClientBinding | None, request: Msg, err: int = Err.OK,
               status: int = 0, flags: int = 0, **fields) -> None:
        """Answer one request, exactly once (a dead client's answer is dropped)."""
        self.answer_seq(client, request.op, request.seq, err, status, flags,
                        dom=fields.pop("dom", request.dom),
                        nonce=fields.pop("nonce", request.nonce),
                        core=fields.pop("core", request.core), **fields)

    def answer_seq(self, client: ClientBinding | None, op: int, seq: int, err: int = Err.OK,
                   status: int = 0, flags: int = 0, dom: int = 0, nonce: int = 0,
                   core: int = 0, payload: bytes = b"") -> None:
        if client is None:
            return  # an internal request (cleanup, kill on exit): nobody waits
        outstanding = client.outstanding
        if seq not in outstanding:
            raise AnswerTwice(f"{client}: request {seq} (op {op}) answered twice or never received")
        outstanding.discard(seq)
        client.answered += 1
        if client.alive:
            client.channel.send(Msg(op, seq, core, dom, nonce, int(err), status,
                                    flags | Flag.REPLY, payload))

    def fail(self, client: ClientBinding, request: Msg, error: ProtocolError) -> None:
        self.answer(client, request, error.code, payload=error.detail.encode()[:256])

    # ---- the stop sequence, shared by kill, exit, and dispatcher deaths ----

    def begin_stop(self, dom: Domain, status: int, signaled: bool = False) -> None:
        """RUNNING -> STOP_PEND: record the status, kill every core still running it."""
        self.table.stop_requested(dom, status, signaled)
        self.send_kills(dom)
        self.maybe_stopped(dom)

    def send_kills(self, dom: Domain) -> None:
        dom.kill_error = None
        for core in sorted(dom.live):
            sd = self.spawnd(core)
            if sd is None:  # its worker is gone, and its processes with it
                self.table.dispatcher_stopped(dom, core)
                dom.held.discard(core)
                continue
            dom.kills_in_flight += 1
            sd.send(Msg(Op.SD_KILL, core=core, dom=dom.id, nonce=dom.nonce))

    def maybe_stopped(self, dom: Domain) -> None:
        """If no core runs ``dom`` any more: STOPPED, answer everyone, clean up."""
        if dom.state != STOP_PEND or dom.live:
            return
        self.table.stopped(dom)
        flags = Flag.SIGNALED if dom.signaled else 0
        killers, dom.killers = dom.killers, []
        for client, seq in killers:
            self.answer_seq(client, Op.KILL, seq, dom=dom.id, nonce=dom.nonce)
        waiters, dom.waiters = dom.waiters, []
        for client, seq in waiters:
            self.answer_seq(client, Op.WAIT, seq, status=dom.exit_status, flags=flags,
                            dom=dom.id, nonce=dom.nonce)
        for core in sorted(dom.held):
            sd = self.spawnd(core)
            if sd is None:
                dom.held.discard(core)
            else:
                sd.send(Msg(Op.SD_CLEANUP, core=core, dom=dom.id, nonce=dom.nonce))
        if not dom.held:
            self.table.dispatcher_cleaned(dom, dom.home_core)

    # ---- lifecycle of peers ----

    def client_gone(self, client: ClientBinding) -> None:
        """The client died or disconnected: drop what waits for it."""
        if client.alive:
            self.answered_gone += client.answered
        client.alive = False
        self.clients.pop(client.id, None)
        self.peers_changed += 1
        for dom_id in self.table.ids():
            dom = self.table.by_id(dom_id)
            dom.waiters = [w for w in dom.waiters if w[0] is not client]
            dom.killers = [k for k in dom.killers if k[0] is not client]
        # Its pending spawnd requests stay in flight (their replies must still
        # be matched) and are answered into the void by answer_seq.

    def spawnd_died(self, core: int) -> None:
        """The worker of ``core`` is gone: fail what waited on it, its domains
        lost their dispatchers there. A new worker may then take the core."""
        from procmgr.handlers import fail_pending

        sd = self.spawnds.pop(core, None)
        if sd is None:
            return
        sd.alive = False
        self.peers_changed += 1
        # First the dispatchers: they died with their worker (PDEATHSIG).
        for dom_id in self.table.ids():
            dom = self.table.by_id(dom_id)
            if core not in dom.live and core not in dom.held:
                continue
            self.table.dispatcher_stopped(dom, core)
            dom.held.discard(core)
            if dom.state == RUNNING:
                self.begin_stop(dom, 9, signaled=True)
            elif dom.state == STOP_PEND:
                self.maybe_stopped(dom)
            elif dom.state == STOPPED and not dom.held:
                self.table.dispatcher_cleaned(dom, core)
        # Then the requests that will never be answered by it.
        for slot in sd.pending.drain():
            fail_pending(self, sd, slot, Err.SPAWND_DIED)
            sd.pending.release(slot)
        for out in sd.sendq:
            fail_pending(self, sd, _Unsent(out), Err.SPAWND_DIED)
        sd.sendq.clear()
        sd.channel.close()


class _Unsent:
    """A send-queue entry seen as a pending slot, to fail it the same way."""

    __slots__ = ("seq", "op", "dom", "core", "client", "client_seq", "extra")

    def __init__(self, out):
        self.seq, self.op, self.dom = out.msg.seq, out.msg.op, out.msg.dom
        self.core = out.msg.core
        self.client, self.client_seq, self.extra = out.client, out.client_seq, out.extra
