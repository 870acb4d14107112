"""The client library: requests as calls, replies as results or ProcMgmtError.

A client owns one ring pair to the manager. Every request carries a fresh
sequence number and the answer echoes it, so many requests can be in flight
at once (``*_async`` return Futures) and answers may come in any order (a
wait is answered only when its domain stops).

``pump``: when the manager runs in the same thread (unit tests), waiting for
an answer calls ``pump()`` to let it work instead of blocking on the ring.

A domain's output (``stdout=``, ``stderr=``, ``output``, ``follow``,
``run``) is described in procmgr/client/logs.py. Reading it asks the manager only
whether the domain exists; the bytes are read from the log files directly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import locale
import logging
import operator
import os
import re
import signal
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from procmgr import containment
from procmgr.client import logs
from procmgr.errors import CalledProcessError, Err, ProcMgmtError, RuntimeGone, TimeoutExpired
from procmgr.client.events import Event, EventCursor, usage_fields
from procmgr.client.logs import LOG
from procmgr.protocol import (
    EVENTS_FROM_NOW, KILL_GRACE_DEFAULT, KILL_MAX_SIGNAL, MAX_PAYLOAD, SPAWN_MAX_PAYLOAD, Decoder,
    Flag, Msg, Op, ProtocolError, SpawnArgs, StatusInfo, decode_events, decode_ids, encode,
    payload_limit, send, send_long, take,
)
from procmgr.protocol import State
from procmgr.protocol.programs import Policy, check_name, encode_request
from ringbuf import Closed, PeerDied, Ring, RingException

# How long a long request cut into by an exception (a Ctrl-C) is still
# finished, while the manager takes nothing of it (Client._send_long).
LONG_SEND_PATIENCE = 10.0
# An events request is answered within its own wait (the manager's timer);
# past it by this much, the manager is taken to be stuck (TimeoutError).
EVENTS_SLACK = 30.0

# concurrent.futures' states (its module's names, not exported), and the
# logger it reports a failed callback to.
_RUNNING, _FINISHED = "RUNNING", "FINISHED"
_LOGGER = logging.getLogger("concurrent.futures")


# A domain token: ID:NONCE (Domain.token).
_TOKEN = re.compile(r"([0-9]{1,10}):([0-9a-fA-F]{1,16})")


@dataclass(frozen=True, slots=True)
class Domain:
    """A domain cap: the id plus the nonce only its holders know."""

    id: int
    nonce: int
    core: int = 0
    pid: int = 0

    @property
    def token(self) -> str:
        """A string form of the cap, to hand to another process."""
        return f"{self.id}:{self.nonce:016x}"

    @classmethod
    def from_token(cls, token: str) -> Domain:
        """The cap a token names: ID (decimal, below 2**32) and NONCE (up to
        16 hex digits), as ``token`` writes them -- nothing else (no sign,
        no "_", no spaces inside)."""
        found = _TOKEN.fullmatch(token.strip()) if isinstance(token, str) else None
        if found is None or int(found[1]) >= 1 << 32:
            raise ValueError(f"{token!r} is not a domain token (ID:NONCE)")
        return cls(int(found[1]), int(found[2], 16))

    def __str__(self) -> str:
        return self.token


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """What the runtime knows of a domain. How it ended: ``killed`` (a
    kill stopped it: ``exit_status`` is then 9, whatever the signal did),
    else ``signaled`` (it died of signal ``exit_status``), else it exited
    with code ``exit_status``. ``wait`` keeps the original's one int: 9
    for a kill, -N for a signal N, the code otherwise -- so a program's own
    ``exit 9`` reads as a kill there; ``killed`` tells them apart.
    What it used, once its dispatchers have ended (None before): CPU
    seconds in user and system mode -- under cgroup containment its
    cgroup's, every process it started, waited for or not; else each
    dispatcher's rusage, which counts the children it waited for, as
    time(1) does -- and its peak resident set in bytes (rusage's);
    ``wall``, the seconds
    from its start to its end. ``max_rss`` is None for a program that
    stayed below the worker's own size (~17 MB): Linux counts the memory a
    new process shares with its parent until its exec into its peak, as
    for every program started the way posix_spawn starts one."""
    id: int
    state: State
    exit_status: int | None
    signaled: bool
    cores: list[int]
    pids: list[int]
    argv: list[str]
    killed: bool = False
    started: float | None = None     # wall clock (epoch seconds)
    ended: float | None = None       # wall clock; None while it runs
    cpu_user: float | None = None    # s
    cpu_system: float | None = None  # s
    max_rss: int | None = None       # bytes: the largest of its dispatchers'

    @property
    def wall(self) -> float | None:
        """Seconds from its start to its end (None while it runs)."""
        return None if self.started is None or self.ended is None else self.ended - self.started


@dataclass(frozen=True, slots=True)
class ProgramInfo:
    """A supervised program (``Client.supervise``): its ``state``
    (STARTING, RUNNING, BACKOFF, STOPPED, EXITED, FATAL), the ``domain``
    and ``pid`` of its incarnation now (None and 0 between two), how often
    it was started again, since when the incarnation runs (``started``,
    epoch seconds; ``uptime``, s), how the last one ended (``last_exit``:
    status, signaled, killed, at), why it could not start (``error``), its
    ``policy`` and its last incarnations, newest last (``history``)."""

    name: str
    state: str
    core: int
    argv: list[str]
    domain: Domain | None
    pid: int
    restarts: int
    started: float | None
    uptime: float | None
    last_exit: dict | None
    error: str | None
    policy: dict
    history: list[dict]
    tag: str = ""

    @classmethod
    def of(cls, view: dict) -> ProgramInfo:
        view = dict(view)
        if view.get("domain") is not None:
            view["domain"] = Domain.from_token(view["domain"])
        return cls(**view)


@dataclass(frozen=True, slots=True)
class CompletedRun:
    """What ``Client.run`` returns, as ``subprocess.CompletedProcess``:
    ``returncode`` is the exit code, 9 after a kill, -N for a death by
    signal N; ``stdout``/``stderr`` are bytes, str with ``text=True``, or
    None where not captured."""

    domain: Domain
    args: list
    returncode: int
    stdout: bytes | str | None = None
    stderr: bytes | str | None = None

    def check_returncode(self) -> None:
        if self.returncode:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr,
                                     self.domain)


class Future(concurrent.futures.Future):
    """The answer to one request: a ``concurrent.futures.Future`` --
    ``concurrent.futures.wait``/``as_completed`` and ``asyncio.wrap_future``
    take it. Where it differs, and why:

    - ``result(timeout)`` and ``exception(timeout)`` take the client's
      answers in while they wait (no thread of ours runs behind the
      client): any thread may call them, and one of the waiting threads
      reads the ring for all (``Client``).
    - ``cancel()`` returns False: a request is sent as its future is made,
      and its answer comes whatever the caller does.
    - Callbacks run in the thread that takes the answer in; an exception
      one raises is logged (concurrent.futures' logger), never raised into
      that unrelated call.

    ``seq`` and ``op`` are the request's; ``reply`` is the answer's Msg once
    it has come."""

    # Slots: concurrent.futures.Future's instances have a dict, ours need
    # none (the control plane makes a future a request).
    __slots__ = ("_client", "seq", "op", "convert", "reply", "_state", "_result",
                 "_exception", "_callbacks_", "_waiters_")

    def __init__(self, client: Client, seq: int, op: int, convert):
        self._client = client
        self.seq, self.op, self.convert, self.reply = seq, op, convert, None
        self._state, self._result, self._exception = _RUNNING, None, None
        self._callbacks_ = []           # made now: two first adders never race
        self._waiters_ = None

    # concurrent.futures.Future's Condition, and its lists of waiters and
    # callbacks: the client's one Condition, and lists made when first used
    # (concurrent.futures.wait appends to _waiters).
    @property
    def _condition(self) -> threading.Condition:
        return self._client._cond

    @property
    def _waiters(self) -> list:
        if self._waiters_ is None:
            self._waiters_ = []
        return self._waiters_

    @property
    def _done_callbacks(self) -> list:
        return self._callbacks_

    def __repr__(self) -> str:
        return f"<procmgr Future request {self.seq} op {self.op} {self._state.lower()}>"

    def done(self) -> bool:
        return self._state == _FINISHED

    def running(self) -> bool:
        return self._state == _RUNNING

    def cancel(self) -> bool:
        return False            # sent already: its answer will come

    def cancelled(self) -> bool:
        return False

    def add_done_callback(self, fn) -> None:
        """Call ``fn(future)`` once answered -- in the thread that takes the
        answer in, or now if it has come; an exception it raises is logged.

        Without a lock: added first, then the state looked at; whichever of
        this call and the answer's takes ``fn`` out of the list runs it
        (list.remove and list.pop are atomic), so it runs exactly once."""
        callbacks = self._callbacks_
        callbacks.append(fn)
        if self._state == _FINISHED:
            try:
                callbacks.remove(fn)
            except ValueError:
                return                  # the answer's thread took it
            _run_callback(fn, self)

    def result(self, timeout: float | None = None):
        """The converted answer, waiting up to ``timeout`` (TimeoutError);
        raises ProcMgmtError if the request failed."""
        if self._state != _FINISHED:
            self._client._wait_done(self, timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout: float | None = None):
        if self._state != _FINISHED:
            self._client._wait_done(self, timeout)
        return self._exception

    def _outcome(self, msg) -> tuple:
        """(result, exception) of an answer."""
        try:
            if type(msg) is _NoAnswer:
                return None, _gone(msg.cause)
            if msg.err != Err.OK:
                detail = msg.payload.decode(errors="replace") if msg.payload else ""
                return None, ProcMgmtError(msg.err, detail, msg.status)
            return self.convert(msg), None
        except Exception as e:          # an answer its conversion could not read
            return None, e


def _answer_all(client: Client, futures: list, answers: list) -> None:
    """Answer a batch of futures: their outcomes set under the client's
    lock once for the batch (waking any thread that waits), then their
    callbacks run, outside it."""
    if len(futures) == 1:               # the common batch: no lists made
        fut, msg = futures[0], answers[0]
        result, error = fut._outcome(msg)
        with client._mutex:
            if fut._state == _FINISHED:     # answered already (the manager gone meanwhile)
                return
            fut.reply = msg
            fut._result, fut._exception, fut._state = result, error, _FINISHED
            if client._sleepers or fut._waiters_:
                for waiter in fut._waiters_ or ():
                    if error is None:
                        waiter.add_result(fut)
                    else:
                        waiter.add_exception(fut)
                client._cond.notify_all()
        callbacks = fut._callbacks_
        while callbacks:
            try:
                fn = callbacks.pop(0)
            except IndexError:
                break
            _run_callback(fn, fut)
        return
    outcomes = [fut._outcome(msg) for fut, msg in zip(futures, answers)]
    with client._mutex:
        notify = client._sleepers
        for fut, msg, (result, error) in zip(futures, answers, outcomes):
            if fut._state == _FINISHED:     # answered already (the manager gone meanwhile)
                continue
            fut.reply = msg
            fut._result, fut._exception, fut._state = result, error, _FINISHED
            waiters = fut._waiters_
            if waiters:
                notify = True
                for waiter in waiters:
                    if error is None:
                        waiter.add_result(fut)
                    else:
                        waiter.add_exception(fut)
        if notify:
            client._cond.notify_all()
    for fut in futures:
        callbacks = fut._callbacks_           # read after the state is FINISHED
        while callbacks:
            try:
                fn = callbacks.pop(0)
            except IndexError:
                break                   # add_done_callback took the last one
            _run_callback(fn, fut)


def _run_callback(fn, fut: Future) -> None:
    try:
        fn(fut)
    except Exception:
        _LOGGER.exception("exception calling callback for %r", fut)


def _never() -> bool:
    return False


def _nothing(msg: Msg) -> None:
    """The result of a request answered with nothing but OK."""
    return None


def _the_answer(msg: Msg) -> Msg:
    return msg


def _gone(cause: Exception) -> RuntimeGone:
    if isinstance(cause, RuntimeGone):   # said already, in its own words
        return RuntimeGone(str(cause))
    if isinstance(cause, PeerDied):
        what = "the runtime's manager is gone"
    else:   # it closed our rings: it stopped, or dropped us for breaking the protocol
        what = "the runtime's manager closed this client's connection"
    gone = RuntimeGone(f"{what}: no answer will come ({cause})")
    gone.__cause__ = cause
    return gone


class _NoAnswer:
    """What a request still waiting is answered with when the manager is
    found gone: its result raises RuntimeGone."""

    __slots__ = ("cause",)

    def __init__(self, cause: Exception):
        self.cause = cause


class Client:
    def __init__(self, requests: Ring, responses: Ring, pump=None, connection=None,
                 doorbell: int = -1, logs_dir: str | None = None,
                 long_limit: int = SPAWN_MAX_PAYLOAD, containment: str = ""):
        """``logs_dir``: the runtime's directory of captured output (None:
        this client cannot read any; in-process runtimes keep none).
        ``containment``: what a kill reaches, as the manager said
        (procmgr/containment.py): "cgroup PATH" or "tree"."""
        self.logs_dir = logs_dir
        self.containment = containment
        self.requests = requests      # we produce
        self.responses = responses    # we consume
        self.pump = pump
        self._connection = connection  # the socket whose EOF tells the manager we left
        self._doorbell = doorbell
        self._decoder = Decoder()
        self._cut_off: list = []      # answers taken, not yet given (_receive)
        # A long message cut short: (its slots, ring.produced before it) --
        # finished before anything else.
        self._unfinished: tuple | None = None
        # The longest payload the manager takes (its handshake says; one
        # before long spawns says nothing, and takes MAX_PAYLOAD).
        self.long_limit = long_limit
        self._waiting: dict[int, Future] = {}
        self._next_seq = 1
        self.unmatched_answers = 0     # answers to no request in flight: duplicates
        self._gone_because: Exception | None = None    # the manager's end, once seen
        # Threads: _lock guards what sending touches (seq, _waiting, the
        # request ring); _cond the futures' state and who reads the answers
        # ring (_reader: one thread at a time, the ring has one consumer).
        # A thread that waits while another reads sleeps on _cond, woken by
        # each answer and when the reader gives way (then one of them reads).
        # Reentrant: a long send holds it while it takes answers in, and
        # what it finds there (the manager gone) may need it again.
        self._lock = threading.RLock()
        self._mutex = threading.RLock()      # taken directly where it is hot
        self._cond = threading.Condition(self._mutex)
        self._reader: int | None = None
        self._sleepers = 0

    def _manager_gone(self, cause: Exception) -> None:
        """The manager is gone: every request still waiting is answered with
        RuntimeGone (callbacks run), and every later call raises it."""
        if self._gone_because is None:          # the first word on it stands
            self._gone_because = cause
        cause = self._gone_because
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
        waiting = [f for f in waiting if f._state != _FINISHED]   # answered, not yet let go
        _answer_all(self, waiting, [_NoAnswer(cause)] * len(waiting))

    # ---- the request/answer machinery ----

    def _send(self, msg: Msg, convert) -> Future:
        if not 0 <= msg.core <= 0xFFFF:
            raise ProcMgmtError(Err.INVALID_SPAWND, f"core {msg.core} is out of range")
        long = len(msg.payload) > MAX_PAYLOAD
        if long:                             # said before anything waits
            limit = min(payload_limit(msg.op), self.long_limit)
            if len(msg.payload) > limit:
                raise ProcMgmtError(Err.ARG_TOO_LONG, f"payload of {len(msg.payload)} bytes "
                                    f"is over the {limit}-byte limit" + (
                                        "" if limit == payload_limit(msg.op) else
                                        " of this runtime (it predates long spawns)"))
        if self._gone_because is not None:
            raise _gone(self._gone_because)
        seq = None
        try:
            with self._lock:
                if self._unfinished is not None:    # a long one cut short: its rest first
                    self._finish_long()
                msg.seq = seq = self._next_seq
                self._next_seq = (seq % 0xFFFFFFFF) + 1  # 0 is never a seq
                fut = self._waiting[seq] = Future(self, seq, msg.op, convert)
                sent = self._send_long(msg) if long else send(self.requests, msg)
            while not sent:
                # The manager is behind: answers taken in free it; then again.
                self._turn(1.0, _never)
                with self._lock:
                    sent = send(self.requests, msg)
            return fut
        except Closed as e:
            self._forget(seq)
            self._manager_gone(e)
            raise _gone(e) from e
        except BaseException:
            self._forget(seq)               # never sent: nothing will answer it
            if self._gone_because is not None:     # a long one cut off: no more
                self._manager_gone(self._gone_because)
            raise

    def _send_long(self, msg: Msg) -> bool:
        """Send a message past MAX_PAYLOAD (a long spawn) in pieces, as the
        manager makes room (procmgr/protocol/messages.py, "Long spawns"),
        holding the send lock: no other message may come between its
        pieces. While it waits for room it takes answers in, as a short
        send does: the manager reads no more of a client whose answers
        wait for room. Cut short by an exception (a Ctrl-C), the message
        is remembered, and its rest goes before anything else this client
        sends (the request itself was sent: its answer is counted in
        ``unmatched_answers``). Blocks an asyncio client's loop for as
        long (~1 ms a MiB while the manager keeps up)."""
        self._unfinished = (encode(msg), self.requests.produced)
        self._finish_long()
        return True

    def _finish_long(self) -> None:
        """Push the rest of the long message under way (_send_long); the
        send lock held. A manager that takes nothing of it for
        LONG_SEND_PATIENCE s leaves this client unable to send more."""
        ring = self.requests
        data, start = self._unfinished
        progress, since = ring.produced, time.monotonic()

        def wait() -> None:
            nonlocal progress, since
            if ring.produced != progress:           # the manager took some: patience anew
                progress, since = ring.produced, time.monotonic()
            if time.monotonic() - since > LONG_SEND_PATIENCE:
                self._unfinished = None
                self._gone_because = RuntimeGone(
                    f"a {len(data)}-byte request was cut off half-sent: the manager took "
                    f"nothing of it for {LONG_SEND_PATIENCE} s")
                raise self._gone_because
            self._turn(0, _never, block=False)     # answers in: the manager waits on them
            ring.wait_space(0.01)

        send_long(ring, data, start, wait)
        self._unfinished = None

    def _forget(self, seq: int) -> None:
        with self._lock:
            self._waiting.pop(seq, None)

    def _wait_done(self, fut: Future, timeout: float | None) -> None:
        """Until ``fut`` is answered, bounded by ``timeout`` (TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while fut._state != _FINISHED:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no answer to request {fut.seq} within {timeout} s")
            self._turn(left, fut.done)

    def _turn(self, left: float | None, ready, block: bool = True) -> None:
        """One round: take answers in (waiting up to ``left`` for one if
        ``block``) -- or, while another thread does, sleep until it answers
        something or gives way. Nothing, if ``ready()`` already: looked at
        under the lock, so an answer a reader just gave is never waited for
        again on the ring."""
        me = threading.get_ident()
        claimed = False
        try:
            with self._mutex:
                if ready():
                    return
                if self._reader is None:
                    self._reader, claimed = me, True
                elif self._reader != me:
                    if not block:
                        return
                    self._sleepers += 1
                    try:
                        self._cond.wait(1.0 if left is None else min(left, 1.0))
                    finally:
                        self._sleepers -= 1
                    return
            # The reader -- or a callback of the reader's, in its own round:
            # either way the ring is read without the lock held, so no other
            # thread's wait stops counting meanwhile.
            self._receive(block, left)
        finally:
            if claimed:
                with self._mutex:
                    self._reader = None
                    if self._sleepers:
                        self._cond.notify_all()      # one of them reads next

    def _receive(self, block: bool, timeout: float | None) -> None:
        """Take every answer that has arrived (waiting for one if ``block``).
        The reader's only (_turn)."""
        if self.pump is not None:
            self.pump()
            block = False
        if self._gone_because is not None:
            raise _gone(self._gone_because)
        # Answers an exception (a Ctrl-C) cut off from their futures in an
        # earlier round come first; taken ones go straight into `answers`.
        answers, self._cut_off = self._cut_off, []
        try:
            if not answers:
                take(self.responses, self._decoder, out=answers)
                if not answers and block and self.responses.wait_data(timeout):
                    take(self.responses, self._decoder, out=answers)
            if answers:
                self._deliver(answers)
        except Closed as e:
            self._manager_gone(e)
            raise _gone(e) from e
        except BaseException:
            self._keep_undelivered(answers)
            raise

    def _deliver(self, answers: list) -> None:
        """Each answer to its future. A future leaves ``_waiting`` only
        once it is answered, so an exception anywhere in between leaves
        every answer either given or findable (_keep_undelivered)."""
        bad = next((m for m in answers if type(m) is not Msg), None)
        if bad is not None:                  # the good ones are answered first
            answers = [m for m in answers if type(m) is Msg]
        # Without the send lock: a long send holds it while it takes
        # answers in. Each dict operation is one step under the GIL; the
        # one compound change of _waiting (_manager_gone) leaves alone a
        # future answered here meanwhile (_answer_all sets each once).
        get = self._waiting.get
        futures = [get(msg.seq) for msg in answers]
        if None in futures:
            self.unmatched_answers += futures.count(None)
            answers = [m for f, m in zip(futures, answers) if f is not None]
            futures = [f for f in futures if f is not None]
        _answer_all(self, futures, answers)
        pop = self._waiting.pop
        for msg in answers:
            pop(msg.seq, None)
        if bad is not None:
            raise ProcMgmtError(Err.BAD_MESSAGE, f"answer from the manager: {bad.detail}")

    def _keep_undelivered(self, answers: list) -> None:
        """After an exception in a round: the answers taken whose futures
        still wait are kept for the next round; those answered are done."""
        left = []
        for msg in answers:
            fut = self._waiting.get(msg.seq) if type(msg) is Msg else None
            if fut is None:
                continue
            if fut._state == _FINISHED:
                self._waiting.pop(msg.seq, None)
            else:
                left.append(msg)
        self._cut_off = left + self._cut_off

    def request(self, msg: Msg) -> Future:
        """Send ``msg`` as it is (its seq is this client's next), and get
        the Future of its answer, whose result is the answer Msg itself:
        for tools and tests that speak the protocol (procmgr/protocol/)
        directly, bad messages included. The operations below are the way
        for everything else."""
        return self._send(msg, _the_answer)

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._waiting)

    def expect(self, seq: int, op: int) -> Future:
        """A Future for the answer to request ``seq`` that this client's ring
        carries but that was not sent through it: slots a tool or a test
        writes by hand with ``requests.try_push``. Pick ``seq`` far from the
        client's own counter (which starts at 1)."""
        with self._lock:
            if seq in self._waiting:
                raise ValueError(f"request {seq} is already in flight")
            fut = self._waiting[seq] = Future(self, seq, op, _the_answer)
        return fut

    def wait_for(self, fut: Future, timeout: float | None = None):
        """Block until ``fut`` is answered (bounded by ``timeout``) and
        return its result: ``fut.result(timeout)``."""
        return fut.result(timeout)

    def poll(self, timeout: float = 0) -> None:
        """Take in whatever answers have arrived; with a ``timeout``, wait up
        to that long for one if none has. (Another thread taking them in
        meanwhile does it for us.)"""
        self._turn(timeout, _never, block=timeout > 0)

    # ---- operations ----

    def spawn_async(self, argv, *, core: int = 0, env: dict | None = None,
                    executable=None, path=None, caps=None, cwd=None, env_extra=None,
                    stop_signal=None, stop_timeout: float | None = None,
                    **streams) -> Future:
        """As ``spawn``, without waiting: the Future of the Domain."""
        op, core, payload = _spawn_request(argv, core, env, executable, path, caps, cwd,
                                           env_extra, stop_signal, stop_timeout, streams)
        return self._send(Msg(op, core=core, payload=payload), _domain_result)

    def spawn(self, argv, *, core: int = 0, env=None, executable=None, path=None,
              cwd=None, env_extra=None, stop_signal=None, stop_timeout=None, timeout=None,
              **streams) -> Domain:
        """Start ``argv`` on ``core``, as ``subprocess.Popen`` would take
        it: a list of arguments (str, bytes or os.PathLike; a str alone is
        refused, where Popen would run it as one program name), the program
        looked up in the PATH of the environment it gets (``env``'s, or the
        runtime's) when it names no directory, or ``executable`` (``path``
        is its older name). ``env``: the whole environment, str or bytes keys and
        values (None: the runtime's); ``env_extra``: variables added to it
        (to the runtime's, without ``env``). ``cwd``: the directory it
        starts in (relative: to the caller's; None: the runtime's, where
        ``procmgr up`` ran). ``stop_signal``/``stop_timeout``: how a kill
        that does not say otherwise ends it (``kill``'s signal and grace;
        default SIGTERM and the runtime's grace). ``stdout=``/``stderr=``
        (LOG, DEVNULL, INHERIT, STDOUT, a path; ``append=True``), ``stdin=``
        (DEVNULL or a path) and ``log_max_bytes=``/``log_backups=`` say
        where its standard streams go: procmgr/client/logs.py.
        ``limits``: {name: value} set before its first instruction, by
        prlimit(1)'s names -- "as" (address space, bytes), "cpu" (seconds),
        "nofile", "nproc", "core", "fsize" (bytes) -- a value a number,
        (soft, hard) or None for none; "memory_max", "cpu_max",
        "pids_max" are the cgroup v2 files', where the runtime's cgroup is
        given their controller. ``user``/``group`` (a name or a number; a
        runtime running as root) and ``umask``. What cannot be had here
        is an error (EXEC_FAILED, saying why), never a limit left unset.

        Differs from subprocess: the options after ``argv`` are keyword-only;
        ``env_extra`` is ours (subprocess has only the whole environment, and
        the runtime's is not the caller's to copy)."""
        return self.wait_for(self.spawn_async(argv, core=core, env=env, executable=executable,
                                              path=path, cwd=cwd, env_extra=env_extra,
                                              stop_signal=stop_signal,
                                              stop_timeout=stop_timeout, **streams), timeout)

    def spawn_with_caps(self, argv, caps, *, core: int = 0, env=None, executable=None,
                        path=None, cwd=None, env_extra=None, stop_signal=None,
                        stop_timeout=None, timeout=None, **streams) -> Domain:
        return self.wait_for(self.spawn_async(argv, core=core, env=env, executable=executable,
                                              path=path, caps=caps, cwd=cwd,
                                              env_extra=env_extra, stop_signal=stop_signal,
                                              stop_timeout=stop_timeout, **streams), timeout)

    def span_async(self, domain: Domain, core: int) -> Future:
        domain = _capability(domain, "span")
        return self._send(Msg(Op.SPAN, core=_core_number(core), dom=domain.id,
                              nonce=domain.nonce),
                          lambda m: m.status)

    def span(self, domain: Domain, core: int, timeout=None) -> int:
        """Start another dispatcher of ``domain`` on ``core``; its pid."""
        return self.wait_for(self.span_async(domain, core), timeout)

    def kill_async(self, domain: Domain, *, signal=None, grace: float | None = None) -> Future:
        """As ``kill``, without waiting: the Future of its end (None)."""
        domain = _capability(domain, "kill")
        if signal is None and grace is None:        # the common kill, as cheap as before
            return self._send(Msg(Op.KILL, dom=domain.id, nonce=domain.nonce), _nothing)
        status, grace_ms = _stop_how(signal, grace)
        payload = b"" if grace_ms is None else struct.pack("<I", grace_ms)
        return self._send(Msg(Op.KILL, dom=domain.id, nonce=domain.nonce, status=status,
                              payload=payload), _nothing)

    def kill(self, domain: Domain, timeout=None, *, signal=None, grace: float | None = None
             ) -> None:
        """End the domain on every core, and answer once it and everything
        it forked are gone: ``signal`` (default SIGTERM) to each
        dispatcher's process group, then SIGKILL once ``grace`` seconds
        have passed (default: the runtime's ``kill_grace``, 0.2 s). A long
        grace holds nobody else up: the worker serves on meanwhile. The
        domain's status is then 9, "killed" (``DomainInfo.exit_status``),
        whatever the signal did. A kill while it is stopping waits for that
        stop; if it says how, its signal is sent too and its grace may end
        the stop sooner (``kill(d, grace=0)`` cuts a long one short), never
        later."""
        return self.wait_for(self.kill_async(domain, signal=signal, grace=grace), timeout)

    def signal_async(self, domain: Domain, sig) -> Future:
        domain = _capability(domain, "signal")
        status, _ = _stop_how(sig, None)
        if status == 0:
            raise ValueError("signal needs a signal: signal.SIGHUP, say")
        return self._send(Msg(Op.SIGNAL, dom=domain.id, nonce=domain.nonce, status=status),
                          _nothing)

    def signal(self, domain: Domain, sig, timeout=None) -> None:
        """Send ``sig`` to the domain's programs (each dispatcher's process
        group) without ending it -- SIGHUP to reload, SIGUSR1, SIGSTOP and
        SIGCONT; answered once every core has sent it. The domain must be
        running, or stopping (DOMAIN_NOT_RUNNING otherwise). Like
        ``os.kill``, it ends the domain if the program dies of it: that is
        then its own exit, -N, not a kill's 9."""
        return self.wait_for(self.signal_async(domain, sig), timeout)

    # ---- supervised programs (procmgr/manager/supervisor.py) ----

    def supervise_async(self, argv, *, name: str, restart: str = "on-failure",
                        backoff: float = 0.1, backoff_factor: float = 2.0,
                        backoff_max: float = 30.0, jitter: float = 0.1,
                        reset_after: float = 10.0, max_restarts: int | None = 5,
                        period: float = 60.0, core: int = 0, env=None, executable=None,
                        path=None, caps=None, cwd=None, env_extra=None, stop_signal=None,
                        stop_timeout=None, autostart: bool = True, tag: str = "",
                        **streams) -> Future:
        """As ``supervise``, without waiting: the Future of its ProgramInfo."""
        _, core, spawn = _spawn_request(argv, core, env, executable, path, caps, cwd,
                                        env_extra, stop_signal, stop_timeout, streams)
        policy = Policy(restart, backoff, backoff_factor, backoff_max, jitter, reset_after,
                        max_restarts, period)          # a bad one said now: ValueError
        return self._program_request({"do": "supervise", "name": check_name(name),
                                      "core": core, "policy": dataclasses.asdict(policy),
                                      "autostart": bool(autostart), "tag": str(tag)}, spawn)

    def supervise(self, argv, *, name: str, timeout=None, **options) -> ProgramInfo:
        """Start ``argv`` as the program ``name``, and keep it as its policy
        says: ``restart`` "on-failure" (default: an exit code other than 0,
        or a death by a signal nobody asked for), "always" or "no"; the
        delay before a restart ``backoff`` s, times ``backoff_factor`` for
        each quick end in a row, at most ``backoff_max``, spread by
        +-``jitter``; an incarnation up ``reset_after`` s starts the delay
        over; more than ``max_restarts`` restarts within ``period`` s and
        it is given up (FATAL; None: never). ``autostart=False`` declares
        it STOPPED, for ``start_program``; ``tag`` is kept and shown as
        given (a config file's digest of the program's table). Every other
        option is ``spawn``'s; the restart goes to the same core.

        Each incarnation is a domain of its own (id, cap, pid): the
        program is its name. A kill of the incarnation, or
        ``stop_program``, stops it for good (what the runtime ends never
        restarts); ``wait_program`` answers once it has stopped, exited
        for good or been given up. Like supervisord's ``[program:x]``
        and systemd's ``Restart=``, with the backoff and intensity both
        bounded by the user; the runtime keeps it, not the client: it
        goes on when the client that asked has gone."""
        return self.wait_for(self.supervise_async(argv, name=name, **options), timeout)

    def _program_request(self, request: dict, spawn: bytes = b"") -> Future:
        return self._send(Msg(Op.PROGRAM, payload=encode_request(request, spawn)),
                          _program_result)

    def program(self, name: str, timeout=None) -> ProgramInfo:
        """The program ``name``'s state now (NO_SUCH_PROGRAM if none)."""
        return self.wait_for(self._program_request({"do": "status", "name": name}), timeout)

    def programs(self, timeout=None) -> list[dict]:
        """Every supervised program, in name order, in short: name, state,
        restarts, pid, core, uptime, last_exit."""
        out, after = [], ""
        while True:
            page = self.wait_for(self._send(Msg(Op.PROGRAM, payload=encode_request(
                {"do": "list", "after": after})), lambda m: json.loads(m.payload)), timeout)
            out += page["programs"]
            if not page["more"] or not page["programs"]:
                return out
            after = out[-1]["name"]

    def start_program(self, name: str, timeout=None) -> ProgramInfo:
        """Start a program that has stopped, exited or been given up (its
        restart count and intensity start over); one running is left be."""
        return self.wait_for(self._program_request({"do": "start", "name": name}), timeout)

    def stop_program_async(self, name: str) -> Future:
        return self._program_request({"do": "stop", "name": name})

    def stop_program(self, name: str, timeout=None) -> ProgramInfo:
        """Stop restarting ``name`` and end its incarnation (as a kill, with
        its ``stop_signal`` and ``stop_timeout``); answered once it has
        ended (STOPPED)."""
        return self.wait_for(self.stop_program_async(name), timeout)

    def restart_program(self, name: str, timeout=None) -> ProgramInfo:
        """Stop ``name`` as ``stop_program`` does, then start it again."""
        return self.wait_for(self._program_request({"do": "restart", "name": name}), timeout)

    def wait_program_async(self, name: str) -> Future:
        return self._program_request({"do": "wait", "name": name})

    def wait_program(self, name: str, timeout=None) -> ProgramInfo:
        """Until ``name`` is STOPPED, EXITED or FATAL: its ProgramInfo then."""
        return self.wait_for(self.wait_program_async(name), timeout)

    def remove_program(self, name: str, timeout=None) -> ProgramInfo:
        """Stop ``name`` and forget it; its last ProgramInfo."""
        return self.wait_for(self._program_request({"do": "remove", "name": name}), timeout)

    def exit_async(self, domain: Domain, status: int) -> Future:
        """A domain says it ends with ``status`` (its last call)."""
        domain = _capability(domain, "exit")
        return self._send(Msg(Op.EXIT, dom=domain.id, nonce=domain.nonce, status=status),
                          _nothing)

    def exit(self, domain: Domain, status: int, timeout=None) -> None:
        return self.wait_for(self.exit_async(domain, status), timeout)

    def wait_async(self, domain: Domain, nohang: bool = False) -> Future:
        domain = _capability(domain, "wait")
        flags = Flag.NOHANG if nohang else 0
        return self._send(Msg(Op.WAIT, dom=domain.id, nonce=domain.nonce, flags=flags),
                          _wait_result)

    def wait(self, domain: Domain, nohang: bool = False, timeout=None) -> int | None:
        """The domain's exit status (9 = killed); None with nohang if it still runs."""
        return self.wait_for(self.wait_async(domain, nohang), timeout)

    def status_async(self, domain: Domain | int) -> Future:
        return self._send(Msg(Op.GET_STATUS, dom=_domain_id(domain)), _status_result)

    def status(self, domain: Domain | int, timeout=None) -> DomainInfo:
        """What the runtime knows of a domain (given as a Domain, token or id)."""
        return self.wait_for(self.status_async(domain), timeout)

    def processes(self, domain: Domain | int, timeout=None) -> list[int]:
        """Every live process of a domain: its dispatchers and all they
        forked -- its cgroups' members under cgroup containment, else
        each dispatcher's process tree (procmgr/containment.py). Empty
        once it has ended. Read from /proc and the cgroup files by this
        process, after a status: a process started meanwhile may be
        missing, one just ended still listed."""
        info = self.status(domain, timeout)
        if info.exit_status is not None or info.state in (State.CLEANED, State.STOPPED):
            return []
        return containment.processes_of(info.pids)

    def domains_page_async(self, start: int = 0, ended: bool = False) -> Future:
        """One page of ``domains``: the Future of (ids from ``start`` on,
        whether more follow)."""
        return self._send(Msg(Op.GET_DOMAINLIST, dom=start,
                              flags=Flag.ENDED if ended else 0),
                          lambda m: (decode_ids(m.payload), m.status))

    def domains(self, timeout=None, *, ended: bool = False) -> list[int]:
        """Ids of all domains not yet cleaned up; with ``ended``, of the
        ended ones the runtime still remembers (its ``history``, 4,096 by
        default), for ``status``: how each ended, and when."""
        ids: list[int] = []
        start = 0
        while start is not None:
            page, more = self.wait_for(self.domains_page_async(start, ended), timeout)
            ids += page
            start = page[-1] + 1 if more and page else None
        return ids

    def stats_async(self) -> Future:
        return self._send(Msg(Op.GET_STATS), lambda m: json.loads(m.payload))

    def stats(self, timeout=None) -> dict:
        """The manager's counters: per core queue depths, totals (for `top`)."""
        return self.wait_for(self.stats_async(), timeout)

    # ---- events ----

    def events_async(self, after: int = EVENTS_FROM_NOW, wait: float = 0.0) -> Future:
        """One request of ``events``: the Future of (seq of the first event
        in the answer, events lost before it, the EventRecords), answered
        when there is an event after ``after`` or ``wait`` s have passed."""
        return self._send(Msg(Op.EVENTS, nonce=after, status=round(wait * 1000)),
                          _events_result)

    def events(self, *, after: int | None = None, kinds=None,
               timeout: float | None = None) -> Iterator[Event]:
        """What happens to domains and programs, as it happens: Events, in
        order, each at least once (procmgr/client/events.py lists the
        kinds and what each carries). ``after``: the ``seq`` of the last
        event already handled, to go on from there (0: every event the
        runtime still keeps; None: from now on). ``kinds``: only those
        (a "lost" event, saying how many were missed, always comes).
        ``timeout``: TimeoutError once that long has passed without an
        event; None waits for ever (Ctrl-C ends it)."""
        cursor = EventCursor(after, timeout, kinds)
        while True:
            wait = cursor.wait_ms() / 1000
            batch = self.wait_for(self.events_async(cursor.after, wait), wait + EVENTS_SLACK)
            for event in cursor.take(batch):
                yield event

    # ---- output ----

    def output(self, domain: Domain | int, stream: str = "stdout", *, tail: int | None = None,
               core: int | None = None) -> bytes:
        """What the domain has written to ``stream`` ("stdout" or "stderr")
        and the runtime captured (LOG): all its log still holds, or the last
        ``tail`` lines. Readable while it runs and after it ends, until the
        runtime forgets it. ``core``: a span's dispatcher on that core
        (default: the one spawned)."""
        ident, core = self.log_location(domain, (stream,), core)
        return logs.read_log(self.logs_dir, ident, core, stream, tail)

    def follow(self, domain: Domain | int, stream: str = "stdout", *, tail: int | None = None,
               core: int | None = None) -> Iterator[bytes]:
        """``output`` and then each new piece as it is written, like ``tail
        -F``; the iteration ends when the domain has ended and all it wrote
        was yielded. Given a Domain (a cap), the end is its wait's answer;
        given only an id, its status is asked every 50 ms."""
        pairs = self.follow_streams(domain, (stream,), tail=tail, core=core)
        return (data for _, data in pairs)

    def follow_streams(self, domain: Domain | int, streams=("stdout", "stderr"), *,
                       tail: int | None = None, core: int | None = None
                       ) -> Iterator[tuple[str, bytes]]:
        """``follow`` of several streams at once: (stream, piece) pairs."""
        ident, core = self.log_location(domain, streams, core)
        if isinstance(domain, Domain):
            ended, pause = self.wait_async(domain).done, lambda: self.poll(FOLLOW_POLL)
        else:
            def ended() -> bool:
                return self.status(ident).state in (State.STOPPED, State.CLEANED)

            def pause() -> None:
                time.sleep(FOLLOW_POLL)
        for piece in logs.follow_logs(self.logs_dir, ident, core, streams, ended, tail):
            if piece is None:
                pause()
            else:
                yield piece

    def log_location(self, domain, streams, core: int | None) -> tuple[int, int]:
        """The id and core of a domain's log, checked: it exists (or a
        clear error), and it ran there."""
        ident = _check_log_request(self.logs_dir, domain, streams)
        try:
            info = self.status(ident)
        except ProcMgmtError as e:
            info = e
        return _log_core(ident, info, domain, core)

    def run(self, argv, *, core: int = 0, env=None, executable=None, path=None, cwd=None,
            env_extra=None, timeout: float | None = None,
            check: bool = False, capture_output: bool = True, input: bytes | str | None = None,
            text: bool = False, encoding: str | None = None, errors: str | None = None,
            stdin=None, stdout=None, stderr=None, log_max_bytes: int | None = None,
            log_backups: int | None = None, **process) -> CompletedRun:
        """Run ``argv`` to its end and return what it printed, as
        ``subprocess.run``. ``capture_output`` (the default here, where
        subprocess's is False: a domain's output otherwise goes to the log,
        which run would not return) captures stdout and stderr through the
        log; what passed the log's bounds is cut from the front, so raise
        ``log_max_bytes`` for more. Without it, stdout/stderr default to the
        caller's own (INHERIT). ``input`` becomes the program's stdin.
        ``timeout``: the domain is killed and TimeoutExpired (also a
        TimeoutError) raised with what it had printed. ``check``: a non-zero
        status raises CalledProcessError. An exception while it waits
        (Ctrl-C) kills the domain too. ``limits``, ``user``, ``group``,
        ``umask``: spawn's."""
        unknown = set(process) - {"limits", "user", "group", "umask"}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        plan = _RunPlan(self, capture_output, input, text, encoding, errors, stdin, stdout,
                        stderr)
        try:
            d = self.spawn(argv, core=core, env=env, executable=executable, path=path,
                           cwd=cwd, env_extra=env_extra, log_max_bytes=log_max_bytes,
                           log_backups=log_backups, **plan.streams, **process)
        finally:
            plan.input_taken()
        try:
            status = self.wait(d, timeout=timeout)
        except TimeoutError:
            self._end(d)
            raise plan.timed_out(argv, timeout, d) from None
        except BaseException:
            self._end(d)
            raise
        return plan.completed(d, argv, status, check)

    def _end(self, domain: Domain) -> None:
        """Kill a domain run() gives up on; one that ended meanwhile is fine."""
        try:
            self.kill(domain)
        except ProcMgmtError as e:
            if e.code != Err.DOMAIN_NOT_RUNNING:
                raise

    def add_spawnd(self, core: int, request_ring: str = "", reply_ring: str = "",
                   timeout=None) -> None:
        """Monitor only: register a worker's rings, or (no names) have the
        manager start a worker for ``core``."""
        payload = f"{request_ring}\0{reply_ring}".encode() if request_ring else b""
        fut = self._send(Msg(Op.ADD_SPAWND, core=core, payload=payload), _nothing)
        return self.wait_for(fut, timeout)

    def close(self) -> None:
        """Leave the runtime. What is still in flight is answered with
        RuntimeGone (a thread waiting for it wakes with that). Safe while
        other threads use the client: its rings are unmapped only once no
        thread is inside them -- the reader, woken by the close, leaves
        first (bounded: if it does not within 5 s, the answers ring stays
        mapped rather than be pulled from under it)."""
        with self._lock:                        # no send is half done
            if self.requests.closed:
                return
            self.requests.close()
        if self._gone_because is None:
            self._manager_gone(RuntimeGone("this client was closed"))
        self.responses.shut()                   # a reader waiting on it wakes, and leaves
        me = threading.get_ident()
        deadline = time.monotonic() + 5.0
        with self._mutex:
            self._sleepers += 1                 # the reader notifies as it gives way
            try:
                while self._reader not in (None, me) and time.monotonic() < deadline:
                    self._cond.wait(0.05)
            finally:
                self._sleepers -= 1
            reader_left = self._reader in (None, me)
        if reader_left:
            self.responses.close()
        if self._connection is not None:
            self._connection.close()
        if self._doorbell >= 0:
            os.close(self._doorbell)
            self._doorbell = -1

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


FOLLOW_POLL = 0.05     # seconds between looks at a followed log


def _check_log_request(logs_dir: str | None, domain, streams) -> int:
    """The id of a domain whose log is asked for, once the request is
    known to make sense (streams named right, a runtime that keeps logs)."""
    for stream in streams:
        logs.check_stream(stream)
    if logs_dir is None:
        raise ProcMgmtError(Err.NOT_FOUND, "this client's runtime keeps no logs")
    return _domain_id(domain)


def _log_core(ident: int, status, domain, core: int | None) -> tuple[int, int]:
    """(id, core) of the log asked for, given the domain's status (or the
    ProcMgmtError its request was answered with, said again in words of
    logs); a core it did not run on is refused."""
    if isinstance(status, ProcMgmtError):
        if status.code == Err.DOMAIN_FORGOTTEN:
            raise ProcMgmtError(Err.DOMAIN_FORGOTTEN, f"domain {ident} ended long enough "
                                "ago to be forgotten, with its logs") from None
        if status.code == Err.DOMAIN_TABLE_FIND:
            raise ProcMgmtError(Err.DOMAIN_TABLE_FIND, f"domain {ident} was never "
                                "started in this runtime") from None
        raise status
    if core is None:
        return ident, status.cores[0] if status.cores else getattr(domain, "core", 0)
    if core not in status.cores:
        raise ValueError(f"domain {ident} has not run on core {core} (it ran on "
                         f"{', '.join(map(str, status.cores)) or 'none'})")
    return ident, core


class _RunPlan:
    """What ``run`` does around its spawn and wait, for the sync client
    and the async one (procmgr/client/aio.py): where the streams go, the
    input file, and the result made of the captured logs."""

    def __init__(self, client: Client, capture_output: bool, input, text: bool,
                 encoding: str | None, errors: str | None, stdin, stdout, stderr):
        if capture_output:
            if stdout is not None or stderr is not None:
                raise ValueError("stdout and stderr arguments may not be used with "
                                 "capture_output")
            stdout = stderr = LOG
        else:
            stdout = logs.INHERIT if stdout is None else stdout
            stderr = logs.INHERIT if stderr is None else stderr
        if input is not None and stdin is not None:
            raise ValueError("stdin and input arguments may not both be used")
        self.logs_dir = client.logs_dir
        self.decode = _decoder(encoding, errors) if text or encoding or errors else None
        self.feed = None
        if input is not None:
            self.feed = _input_file(client.logs_dir, input, self.decode is not None, encoding)
        self.streams = {"stdin": self.feed or stdin, "stdout": stdout, "stderr": stderr}

    def input_taken(self) -> None:
        """After the spawn: the program has its input open (or never will)."""
        if self.feed is not None:
            os.unlink(self.feed)

    def captured(self, d: Domain) -> list:
        out = [logs.read_log(self.logs_dir, d.id, d.core, name) if self.streams[name] is LOG
               else None for name in ("stdout", "stderr")]
        return [self.decode(x) if self.decode and x is not None else x for x in out]

    def timed_out(self, argv, timeout: float, d: Domain) -> TimeoutExpired:
        return TimeoutExpired(argv, timeout, *self.captured(d), domain=d)

    def completed(self, d: Domain, argv, status: int, check: bool) -> CompletedRun:
        result = CompletedRun(d, argv, status, *self.captured(d))
        if check:
            result.check_returncode()
        return result


def _input_file(logs_dir: str | None, data, text: bool, encoding: str | None) -> str:
    """``input`` as a file the program reads as its stdin: in the
    runtime's directory (owner-only), removed once it is open."""
    if isinstance(data, str):
        if not text:
            raise TypeError("input is str: pass text=True, or give bytes")
        data = data.encode(encoding or locale.getpreferredencoding(False))
    if logs_dir is None:
        raise ProcMgmtError(Err.NOT_FOUND, "this client's runtime has no directory "
                            "for input")
    fd, name = tempfile.mkstemp(prefix="input-", dir=os.path.dirname(logs_dir))
    with open(fd, "wb") as f:
        f.write(memoryview(data))
    return name


def _all_caps(streams: dict, caps) -> list:
    """Caps for the standard streams the caller named, then its own caps;
    one descriptor named twice is an error."""
    unknown = set(streams) - {"stdin", "stdout", "stderr", "append", "log_max_bytes",
                              "log_backups"}
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    made = logs.stream_caps(**streams)
    given = list(caps or [])
    twice = {fd for fd, _, _ in made} & {c[0] for c in given if isinstance(c, tuple) and c}
    if twice:
        raise ValueError(f"descriptor {min(twice)} is named both by a stream argument and "
                         "by caps")
    return made + given


def _domain_id(value) -> int:
    """The id of a Domain, a token (ID:NONCE) or an id."""
    if isinstance(value, Domain):
        return value.id
    if isinstance(value, str):
        return Domain.from_token(value).id
    if type(value) is not int:
        raise TypeError(f"a domain is a Domain, its token (ID:NONCE) or an id (int), "
                        f"not {value!r}")
    if not 0 <= value < 1 << 32:
        raise ValueError(f"domain id {value} is out of range (ids are 32-bit)")
    return value


def _capability(value, call: str) -> Domain:
    """The Domain a call that acts on it needs: a Domain or its token. An
    id alone is refused -- it does not carry the right to act (the nonce):
    status and output take one."""
    if isinstance(value, Domain):
        return value
    if isinstance(value, str):
        return Domain.from_token(value)
    if type(value) is int:
        raise TypeError(f"{call} needs the Domain or its token (ID:NONCE), not the bare id "
                        f"{value}: an id does not carry the right to act on it "
                        "(status and output take one)")
    raise TypeError(f"{call} needs a Domain or its token (ID:NONCE), not {value!r}")


def _decoder(encoding: str | None, errors: str | None):
    encoding = encoding or locale.getpreferredencoding(False)

    def decode(data: bytes) -> str:
        # universal newlines, as subprocess's text mode
        return data.decode(encoding, errors or "strict").replace("\r\n", "\n").replace(
            "\r", "\n")
    return decode


def _domain_result(msg: Msg) -> Domain:
    return Domain(msg.dom, msg.nonce, msg.core, msg.status)


def _spawn_request(argv, core, env, executable, path, caps, cwd, env_extra, stop_signal,
                   stop_timeout, streams) -> tuple[int, int, bytes]:
    """A spawn's op, core and payload, from spawn's arguments, checked."""
    settings = _process_settings(streams) if streams else {}
    caps = _all_caps(streams, caps) if streams or caps else None
    op = Op.SPAWN_WITH_CAPS if caps else Op.SPAWN
    if type(core) is not int or not 0 <= core <= 0xFFFF:
        core = _core_number(core)
    if type(argv) is list and not caps and env is None and executable is None \
            and path is None and cwd is None and env_extra is None \
            and stop_signal is None and stop_timeout is None and not settings:
        # The common case, kept encoded (and so checked) from the last time.
        try:
            return op, core, _plain_spawn_payload(argv[0], tuple(argv))
        except (TypeError, ValueError, IndexError, KeyError, ProtocolError):
            pass    # something to convert, or wrong: the full way says what
    args = _program(argv, env, executable, path, env_extra, cwd)
    args.caps = list(caps or [])
    args.settings = settings
    if stop_signal is not None or stop_timeout is not None:
        sig, grace_ms = _stop_how(stop_signal, stop_timeout)
        args.stop = (sig or signal.SIGTERM, KILL_GRACE_DEFAULT if grace_ms is None else grace_ms)
    try:
        return op, core, args.encode()
    except ProtocolError as e:
        raise ProcMgmtError(e.code, e.detail) from None


@functools.lru_cache(maxsize=256)
def _plain_spawn_payload(path: str, argv: tuple[str, ...]) -> bytes:
    """The payload of a spawn of ``argv`` and nothing else. Only text
    reaches it: anything SpawnArgs refuses (bytes, a path object, a NUL)
    raises here and takes the full way (_program), which converts or says
    what is wrong."""
    if type(path) is not str or not all(type(a) is str for a in argv):
        raise TypeError("not all text")
    return SpawnArgs(path, list(argv)).encode()


def _core_number(core) -> int:
    """A core as the protocol takes it: an int (or anything with
    __index__, numpy's included -- not a bool, a float or a str)."""
    if type(core) is not int:
        if isinstance(core, bool) or not hasattr(type(core), "__index__"):
            raise TypeError(f"core must be an int, not {type(core).__name__} ({core!r})")
        core = operator.index(core)
    if not 0 <= core <= 0xFFFF:
        raise ValueError(f"core {core} is out of range: cores are numbered 0 to 65535 at "
                         "most (the runtime says which it serves)")
    return core


def _text(value, what: str) -> str:
    """An argument, path or environment word as the protocol carries it:
    text without NUL (each is sent NUL-terminated). Bytes that are not
    UTF-8 travel as os.fsdecode gives them and reach the program
    unchanged, as execve takes them."""
    if type(value) is not str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, bytes):
            value = os.fsdecode(value)
        elif not isinstance(value, str):
            raise TypeError(f"{what} must be str, bytes or os.PathLike, "
                            f"not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL character: {value!r}")
    if not value.isascii():
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:          # a lone surrogate no bytes decode to
            raise ValueError(f"{what} ({value!r}) is not text any bytes decode to: give "
                             "bytes, or str from os.fsdecode") from None
    return value


def _program(argv, env, executable, path, env_extra=None, cwd=None) -> SpawnArgs:
    """The spawn asked for, checked and converted (TypeError/ValueError
    saying what is wrong). A program that names no directory is looked up
    by the worker, in the PATH the domain will get (spawnd_workers/worker.py).
    ``env_extra`` is added to ``env``, or (without one) to the runtime's
    environment, which only the worker knows; ``cwd`` is made absolute here,
    against the caller's working directory, as the paths of its streams."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        raise TypeError(f"argv must be a list of arguments, not a {type(argv).__name__}: "
                        f"[{argv!r}] runs that program, shlex.split({argv!r}) splits a "
                        "command line")
    try:
        argv = list(argv)
    except TypeError:
        raise TypeError(f"argv must be a list of arguments, not {type(argv).__name__}") from None
    if not argv:
        raise ValueError("argv is empty: it needs at least the program to run")
    if not all(type(a) is str and "\0" not in a and a.isascii() for a in argv):
        argv = [_text(a, f"argv[{i}]") for i, a in enumerate(argv)]
    env = _environment(env, "env")
    extra = _environment(env_extra, "env_extra")
    adds = extra is not None and env is None
    if extra is not None:
        env = extra if adds else env | extra
    if executable is not None and path is not None:
        raise TypeError("give executable or path (its older name), not both")
    given = executable if executable is not None else path
    program = argv[0] if given is None else _text(given, "executable")
    if cwd is not None:
        cwd = os.path.abspath(_text(cwd, "cwd"))
    return SpawnArgs(program, argv, env, [], cwd, adds)


def _environment(env, what: str) -> dict | None:
    """An environment given as a dict of str, bytes or os.PathLike, as text."""
    if env is None:
        return None
    if not isinstance(env, dict):
        raise TypeError(f"{what} must be a dict, not {type(env).__name__}")
    checked = {}
    for key, value in env.items():
        name = _text(key, f"an {what} key ({key!r})")
        if not name or "=" in name:
            raise ValueError(f"{what} key {name!r} is not a variable name")
        checked[name] = _text(value, f"{what}[{key!r}]")
    return checked


# A spawn's limits, by the names prlimit(1) gives them, then those a cgroup
# v2 controller enforces (the file's name with "_" for "."); a value is a
# number for both soft and hard limit, (soft, hard), or None for none.
RLIMIT_NAMES = ("as", "cpu", "nofile", "nproc", "core", "fsize")
CGROUP_LIMIT_NAMES = ("memory_max", "cpu_max", "pids_max")


def _process_settings(options: dict) -> dict[str, str]:
    """The settings (payloads.py's SETTINGS) a spawn's ``limits``,
    ``user``, ``group`` and ``umask`` options ask for, taken out of
    ``options`` and checked here, in words, before anything is sent."""
    limits, user, group, umask = (options.pop(k, None)
                                  for k in ("limits", "user", "group", "umask"))
    settings: dict[str, str] = {}
    if limits is not None:
        if not isinstance(limits, dict):
            raise TypeError(f"limits must be a dict of name: value, not {limits!r}")
        for name, value in limits.items():
            if name in CGROUP_LIMIT_NAMES:
                text = "max" if value is None else str(value)
                if "\0" in text or not text:
                    raise ValueError(f"limit {name} is {value!r}")
                settings[f"limit.{name}"] = text
                continue
            if name not in RLIMIT_NAMES:
                raise ValueError(f"{name!r} is not a limit: the limits are "
                                 f"{', '.join(RLIMIT_NAMES + CGROUP_LIMIT_NAMES)}")
            pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
            if len(pair) != 2 or not all(v is None or (type(v) is int and v >= 0) for v in pair):
                raise ValueError(f"limit {name} must be a number >= 0, (soft, hard) or None "
                                 f"(no limit), not {value!r}")
            settings[f"limit.{name}"] = ":".join("inf" if v is None else str(v) for v in pair)
    for key, value in (("user", user), ("group", group)):
        if value is None:
            continue
        if (type(value) is int and 0 <= value < (1 << 32) - 1) or \
                (isinstance(value, str) and value and value.isprintable()):
            settings[key] = str(value)
        else:
            raise ValueError(f"{key} must be a name or a number from 0 to {(1 << 32) - 2}, "
                             f"not {value!r}")
    if umask is not None:
        if type(umask) is not int or not 0 <= umask <= 0o777:
            raise ValueError(f"umask must be a number from 0 to 0o777, not {umask!r}")
        settings["umask"] = format(umask, "o")
    return settings


def _stop_how(sig, grace) -> tuple[int, int | None]:
    """A kill's signal and grace as the protocol carries them: the signal's
    number (0: none given) and the grace in ms (None: none given), checked
    here, in words, before anything is sent (protocol.h, KILL_MAX_SIGNAL)."""
    status = 0
    if sig is not None:
        if isinstance(sig, bool) or not isinstance(sig, int) or not 0 < sig <= KILL_MAX_SIGNAL:
            raise ValueError(f"signal must be a signal number (1..{KILL_MAX_SIGNAL}) or a "
                             f"signal.Signals, not {sig!r}")
        status = int(sig)
    if grace is None:
        return status, None
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or \
            not 0 <= round(grace * 1000) < KILL_GRACE_DEFAULT:
        raise ValueError(f"grace must be seconds from 0 to {KILL_GRACE_DEFAULT // 1000 - 1}, "
                         f"not {grace!r}")
    return status, round(grace * 1000)


def _wait_result(msg: Msg) -> int | None:
    """Exit code; 9 after a kill; -N for a death by signal N nobody asked for
    (as subprocess reports it); None when nohang found it still running."""
    if msg.flags & Flag.STILL_RUNNING:
        return None
    return -msg.status if msg.flags & Flag.SIGNALED else msg.status


def _program_result(msg: Msg) -> ProgramInfo:
    try:
        return ProgramInfo.of(json.loads(msg.payload))
    except (ValueError, TypeError, KeyError) as e:
        raise ProcMgmtError(Err.BAD_MESSAGE, f"a program's answer that cannot be read: {e}") \
            from None


def _events_result(msg: Msg) -> tuple:
    return decode_events(msg.payload)


def _status_result(msg: Msg) -> DomainInfo:
    info = StatusInfo.decode(msg.payload)
    return DomainInfo(msg.dom, State(info.state), info.exit_status, info.signaled,
                      info.cores, info.pids, info.argv, info.killed, info.started or None,
                      info.ended, **usage_fields(info.usage))
