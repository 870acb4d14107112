"""Supervised programs: restart policies kept in the manager, which alone
sees every exit.

A program is a name, a spawn (its payload and core) and a policy. Each
incarnation is an ordinary domain with its own id, cap and pid -- listed,
waited, signalled like any other; the program is what stays: its name,
its state, its restart count and the history of its last incarnations.

The supervisor is a client of the manager like any other, living in the
manager's process: it hands the core each incarnation's spawn and wait
as Python-decoded requests, and takes the answers from a ring of its
own, so the core needs to know nothing of programs -- a restart is a
spawn, an end is a wait's answer, both served as every client's are. It
runs in the manager's thread: the loop takes its answers in (``pump``,
when they ring ``woken``) and runs its backoff timers
(``EventLoop.call_later``); with no delay a restart goes in the pass
after the one that saw the end.

States, as supervisord names them:

    STARTING  the spawn is sent, not yet answered
    RUNNING   the incarnation runs
    BACKOFF   it ended and will be started again once its delay is over
    STOPPED   stopped by a user (``stop``, or a kill of the incarnation:
              what the runtime ends never restarts)
    EXITED    it ended and the policy says not to start it again
    FATAL     given up: it ended more often than the policy's intensity
              allows (``max_restarts`` within ``period`` seconds, as an
              Erlang/OTP supervisor's), or could not be started

A request that waits on a program (``wait``, ``stop``) is answered when
the program settles in one of the last three.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import os
import time
from dataclasses import asdict

from procmgr.errors import Err, describe
from procmgr.protocol import (
    MAX_PAYLOAD, Decoder, EventKind, Flag, Msg, Op, ProtocolError, SpawnArgs, take,
)
from procmgr.protocol.programs import SETTLED, Policy, check_name, decode_request

HISTORY = 10                    # incarnations kept per program
# Bounds on what clients can make the supervisor hold: programs (each has
# at most a spawn, a wait and a kill in flight -- the supervisor is one
# client binding, within the core's 65,536 unanswered), their spawn
# payloads, and the requests waiting on one program.
PROGRAMS_MAX = 10_000
PAYLOAD_BYTES_MAX = 256 << 20
WAITERS_MAX = 1024
# A spawn the core refused at once (no worker on the core, the table full,
# BUSY) is not tried again sooner: a zero backoff would spin on it.
REFUSED_DELAY = 0.5
# The supervisor's spawns in one worker's queue at once: restarts beyond
# wait their turn in the supervisor, not in front of other clients' spawns.
SPAWNS_PER_CORE = 1
# ... and while another client's requests are in a worker, ours wait
# (looked at again every YIELD_RECHECK s), but at most YIELD_MAX s.
YIELD_RECHECK = 0.001
YIELD_MAX = 0.05
# After each of its spawns on a core, while others of its programs wait for
# that core, the supervisor waits REST_FACTOR times as long as that spawn
# took (at most REST_MAX s) before its next there: crash loops together
# take at most a third of a worker's time.
REST_FACTOR = 2.0
REST_MAX = 0.05
# Answers taken in per pump: the rest at the next pass, others served between.
PUMP_ROUNDS = 64
_REFUSED = (Err.INVALID_SPAWND, Err.CREATE_DOMAIN_CAP, Err.BUSY)

class _NoProgram(LookupError):
    """A request names a program that is not supervised."""


class Program:
    __slots__ = ("name", "payload", "core", "argv", "policy", "tag", "state", "domain", "pid",
                 "started", "up_since", "restarts", "quick_ends", "recent", "last_exit",
                 "history", "settled_waiters", "timer", "stopping", "spawn_error",
                 "kill_sent", "refused", "queued", "queued_at", "sent_at", "restarting",
                 "restart_sent", "spawn_err")

    def __init__(self, name: str, payload: bytes, core: int, argv: list[str], policy: Policy,
                 tag: str = ""):
        self.name, self.payload, self.core, self.argv = name, payload, core, argv
        self.policy = policy
        self.tag = tag                  # the requester's, returned as given (a file's digest)
        self.state = "STARTING"
        self.domain: tuple[int, int] | None = None      # (id, nonce) of the incarnation
        self.pid = 0
        self.started = 0.0              # wall clock, of the incarnation
        self.up_since = 0.0             # monotonic, of the incarnation
        self.restarts = 0
        self.quick_ends = 0             # ends in a row sooner than reset_after
        self.recent: collections.deque[float] = collections.deque()  # restart times
        self.last_exit: dict | None = None
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY)
        self.settled_waiters: list = []  # (client, msg): answered once settled
        self.timer = None
        # A stop under way, and what follows it: False, "stop", "restart" or
        # "remove" -- a later request raises it, never lowers it (_intend).
        self.stopping: str | bool = False
        self.spawn_error = ""
        self.kill_sent = False          # the incarnation's one kill is sent
        self.refused = False            # the last spawn was refused by the core
        self.queued = False             # waiting for its core (Supervisor._start)
        self.queued_at = 0.0            # since when (monotonic)
        self.sent_at = 0.0              # when its last spawn went
        self.restarting = False         # the start under way is a restart
        self.restart_sent = False       # the spawn in flight is a restart's
        self.spawn_err = 0              # the last spawn's error code (0: it ran)

    def view(self, history: int = HISTORY, argv_items: int = 16) -> dict:
        """What status and ps show (``history``, ``argv_items``: how much
        of those; _fitted asks for less when an answer would not fit)."""
        now = time.monotonic()
        return {
            "name": self.name, "state": self.state, "core": self.core,
            "argv": _shown(self.argv)[:argv_items],
            "domain": None if self.domain is None else
            f"{self.domain[0]}:{self.domain[1]:016x}",
            "pid": self.pid, "restarts": self.restarts,
            "started": self.started or None,
            "uptime": round(now - self.up_since, 3) if self.state == "RUNNING" else None,
            "last_exit": self.last_exit, "error": self.spawn_error or None,
            "policy": asdict(self.policy),
            "history": list(self.history)[-history:] if history else [], "tag": self.tag,
        }


def start_supervisor(mgr, loop) -> Supervisor:
    """The manager's supervisor: a client binding of its own, whose
    requests go straight into the core (Core.dispatch_client, as Python
    decoded them) -- a ring could not take a long spawn from the
    manager's own thread -- and whose answers come back in a sealed ring,
    as any client's, which rings ``woken``: answered in C, the loop would
    not come back to Python for them before its idle timeout."""
    from procmgr.manager.channel import Channel
    from procmgr.manager.server import RING_CAPACITY
    from ringbuf import Ring

    requests = Ring.create_sealed(2, label="supervisor.requests")     # never written
    responses = Ring.create_sealed(RING_CAPACITY, label="supervisor.responses")
    try:
        answers = Ring.attach_fd(os.dup(responses.fileno()), "supervisor.responses")
    except BaseException:
        requests.close()
        responses.close()
        raise
    requests.release_fd()
    responses.release_fd()
    woken = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    responses.set_doorbell(woken)           # rung by the producer's end: the manager's
    binding = mgr.add_client(Channel(requests, responses, "supervisor"))
    supervisor = Supervisor(mgr, binding.id, answers, loop.call_later, woken)
    loop.watch(woken, supervisor.woken)
    return supervisor


class Supervisor:
    def __init__(self, mgr, client_id: int, answers, call_later, woken: int = -1):
        """``client_id``: the supervisor's binding in the manager, whose
        requests it hands the core; ``answers``: its end of the ring the
        core answers into. ``call_later(delay, fn)``: the loop's timer.
        ``woken``: what the core's answers ring (-1: none)."""
        self.mgr = mgr
        self.client_id = client_id
        self.answers = answers
        self.decoder = Decoder()
        self.call_later = call_later
        self.woken_fd = woken
        self.programs: dict[str, Program] = {}
        self.names: list[str] = []              # the programs' names, sorted (list)
        self.payload_bytes = 0                  # their spawns' payloads, together
        self._spawning: dict[int, int] = {}     # core -> our spawns in flight there
        # client id -> names of the programs it has requests waiting on (a
        # superset: answered ones are not taken out; client_gone filters).
        self._waited_by: dict[int, set[str]] = {}
        self._queued: dict[int, collections.deque] = {}   # core -> programs waiting for it
        self._recheck: set[int] = set()         # cores whose queue a timer looks at again
        self._rested: dict[int, float] = {}     # core -> when our next spawn may go there
        self._next_seq = 1
        self._waiting: dict[int, object] = {}      # seq -> what its answer is for

    def pump(self) -> None:
        """Take in the answers to the supervisor's own requests (each moves
        its program on), then arm the ring for the manager to ring
        ``woken``. Never waits."""
        for _ in range(PUMP_ROUNDS):
            for msg in take(self.answers, self.decoder):
                then = self._waiting.pop(msg.seq, None) if type(msg) is Msg else None
                if then is not None:
                    then(msg)
            if self.woken_fd < 0 or not self._waiting or not self.answers.arm():
                return              # nothing to wait for, or armed and empty

    def woken(self, fd: int, events: int) -> None:
        """The loop's watcher of ``woken``: the manager answered us."""
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass
        self.pump()

    def _request(self, msg: Msg, then=None) -> None:
        """One of the supervisor's own requests, into the core; ``then(answer)``
        once it is answered."""
        msg.seq = seq = self._next_seq
        self._next_seq = seq % 0xFFFFFFFF + 1
        if then is not None:
            self._waiting[seq] = then
        self.mgr.core.dispatch_client(self.client_id, msg)

    # ---- requests from clients (OP_PROGRAM) ----

    def handle(self, client, msg: Msg) -> None:
        try:
            request, spawn = decode_request(msg.payload)
            what = request.get("do")
            handler = _ACTIONS.get(what)
            if handler is None:
                raise ValueError(f"unknown program action {what!r} "
                                 f"(one of {', '.join(sorted(_ACTIONS))})")
            handler(self, client, msg, request, spawn)
        except _NoProgram as e:
            self._answer(client, msg, Err.NO_SUCH_PROGRAM,
                         repr(e.args[0]))
        except ProtocolError as e:
            self._answer(client, msg, e.code, e.detail)
        except (ValueError, TypeError) as e:
            self._answer(client, msg, Err.BAD_MESSAGE, str(e))

    def _answer(self, client, msg: Msg, err: Err = Err.OK, body=None) -> None:
        """OK with the program's view as JSON, or an error in words."""
        if err != Err.OK:
            payload = str(body).encode("utf-8", "backslashreplace")[:256]
        else:
            payload = body if isinstance(body, bytes) else _encoded(body)
        self.mgr.answer(client, msg, err, payload=payload)

    def _program(self, request: dict) -> Program:
        name = request.get("name")
        program = self.programs.get(name) if isinstance(name, str) else None
        if program is None:
            raise _NoProgram(name)
        return program

    def supervise(self, client, msg, request, spawn) -> None:
        name = check_name(request.get("name"))
        if name in self.programs:
            return self._answer(client, msg, Err.PROGRAM_EXISTS,
                                repr(name))
        policy = request.get("policy") or {}
        if not isinstance(policy, dict):
            raise ValueError("a program's policy is a JSON object")
        policy = Policy.of(policy)
        args = SpawnArgs.decode(spawn)          # checked now, said now (ProtocolError)
        core = request.get("core", 0)
        if isinstance(core, bool) or not isinstance(core, int) or core not in self.mgr.spawnds:
            return self._answer(client, msg, Err.INVALID_SPAWND,
                                f"core {core!r} is not served: cores "
                                f"{sorted(self.mgr.spawnds)}")
        tag = request.get("tag", "")
        if not isinstance(tag, str) or len(tag) > 64:
            raise ValueError("a program's tag is a string of at most 64 characters")
        if len(self.programs) >= PROGRAMS_MAX:
            return self._answer(client, msg, Err.BUSY,
                                f"{PROGRAMS_MAX} programs are supervised, the most there may be")
        if self.payload_bytes + len(spawn) > PAYLOAD_BYTES_MAX:
            return self._answer(client, msg, Err.BUSY,
                                f"the programs' spawns hold {self.payload_bytes} bytes; "
                                f"{len(spawn)} more would pass the {PAYLOAD_BYTES_MAX}-byte bound")
        program = Program(name, spawn, core, _shown(args.argv), policy, tag)
        self.programs[name] = program
        bisect.insort(self.names, name)
        self.payload_bytes += len(spawn)
        if request.get("autostart", True) is False:
            program.state = "STOPPED"       # declared; `start` starts it
        else:
            self._start(program)
        self._answer(client, msg, body=_fitted(program))

    def status(self, client, msg, request, spawn) -> None:
        self._answer(client, msg, body=_fitted(self._program(request)))

    def list(self, client, msg, request, spawn) -> None:
        """A page of programs, in name order, from ``after``; "more" if the
        page was cut (an answer is at most 8 KiB)."""
        after = request.get("after") or ""
        if not isinstance(after, str):
            raise ValueError("a list's 'after' is a program name")
        start = bisect.bisect_right(self.names, after)
        page, size, now = [], 2, time.monotonic()
        for name in itertools.islice(self.names, start, None):
            p = self.programs[name]
            item = {"name": name, "state": p.state, "restarts": p.restarts, "pid": p.pid,
                    "core": p.core, "last_exit": p.last_exit, "tag": p.tag,
                    "started": p.started or None,
                    "uptime": round(now - p.up_since, 3) if p.state == "RUNNING" else None}
            size += len(json.dumps(item)) + 1
            if size > 7000:
                break
            page.append(item)
        self._answer(client, msg, body={"programs": page,
                                        "more": start + len(page) < len(self.names)})

    def _wait_on(self, program: Program, client, msg) -> bool:
        """``msg`` is answered once ``program`` settles; False (answered
        BUSY now) past WAITERS_MAX."""
        if len(program.settled_waiters) >= WAITERS_MAX:
            self._answer(client, msg, Err.BUSY,
                         f"{WAITERS_MAX} requests wait on {program.name!r} already")
            return False
        program.settled_waiters.append((client, msg))
        self._waited_by.setdefault(client.id, set()).add(program.name)
        return True

    def client_gone(self, client) -> None:
        """What a client that left waited on is forgotten: the programs it
        waited on, not every program (a client leaving costs what it owed)."""
        for name in self._waited_by.pop(client.id, ()):
            program = self.programs.get(name)
            if program is not None and program.settled_waiters:
                program.settled_waiters = [w for w in program.settled_waiters
                                           if w[0] is not client]

    def wait(self, client, msg, request, spawn) -> None:
        program = self._program(request)
        if program.state in SETTLED:
            return self._answer(client, msg, body=_fitted(program))
        self._wait_on(program, client, msg)

    def stop(self, client, msg, request, spawn) -> None:
        program = self._program(request)
        if self._wait_on(program, client, msg):
            self._intend(program, "stop")
            self._stop(program)

    def start(self, client, msg, request, spawn) -> None:
        program = self._program(request)
        if program.stopping:                # a stop under way: started once it is over
            if self._wait_on(program, client, msg):
                self._intend(program, "restart")
            return
        if program.state not in SETTLED:
            return self._answer(client, msg, body=_fitted(program))      # running already
        program.recent.clear()
        program.quick_ends = 0
        self._start(program)
        self._answer(client, msg, body=_fitted(program))

    def restart(self, client, msg, request, spawn) -> None:
        """Stop the program, then start it (answered once it is started)."""
        program = self._program(request)
        if not self._wait_on(program, client, msg):
            return
        if program.state in SETTLED and not program.stopping:
            return self._settle(program, "STOPPED", then_start=True)
        self._intend(program, "restart")
        self._stop(program)

    def remove(self, client, msg, request, spawn) -> None:
        """Stop the program, then forget it (answered once it is gone)."""
        program = self._program(request)
        if self._wait_on(program, client, msg):
            self._intend(program, "remove")
            self._stop(program)

    @staticmethod
    def _intend(program: Program, what: str) -> None:
        """What follows the stop under way: a later request raises it
        (remove over restart over stop), never lowers it -- a start asked
        during a stop is not lost, nor a remove to a later stop."""
        rank = {False: 0, True: 1, "stop": 1, "restart": 2, "remove": 3}
        if rank[what] > rank[program.stopping]:
            program.stopping = what

    # ---- the programs' lives ----

    def _start(self, program: Program) -> None:
        program.state, program.stopping, program.spawn_error = "STARTING", False, ""
        program.timer, program.kill_sent, program.refused = None, False, False
        program.queued, program.queued_at = True, time.monotonic()
        self._queued.setdefault(program.core, collections.deque()).append(program)
        self._drain(program.core)

    def _drain(self, core: int) -> None:
        """Our spawns waiting for ``core`` go, in order, while its worker
        holds fewer than SPAWNS_PER_CORE of ours and no worker holds
        another client's request -- or the first has waited YIELD_MAX: a
        crash loop's restarts let other clients' requests go first (else
        each waited behind restarts and the CPU they take), but never wait
        for ever behind clients that keep the workers busy."""
        queue = self._queued.get(core)
        while queue:
            head = queue[0]
            if not head.queued or self.programs.get(head.name) is not head:
                queue.popleft()         # stopped or removed meanwhile
                continue
            if self._spawning.get(core, 0) >= SPAWNS_PER_CORE:
                return                  # one of ours is answered: we come back
            now = time.monotonic()
            rest = self._rested.get(core, 0.0) - now
            if rest > 0 and len(queue) > 1:     # many restarting: the worker rests between
                if core not in self._recheck:
                    self._recheck.add(core)
                    self.call_later(rest, lambda: self._rechecked(core))
                return
            if self._others_waiting() and now - head.queued_at < YIELD_MAX:
                if core not in self._recheck:
                    self._recheck.add(core)
                    self.call_later(YIELD_RECHECK, lambda: self._rechecked(core))
                return
            queue.popleft()
            self._send_spawn(head)

    def _rechecked(self, core: int) -> None:
        self._recheck.discard(core)
        self._drain(core)

    def _others_waiting(self) -> bool:
        """Whether any worker holds requests that are not our spawns: on a
        machine whose CPUs the loops keep busy, a restart on one core
        slows another core's spawn as much as its own worker's queue."""
        return self.mgr.core.worker_requests > sum(self._spawning.values())

    def _send_spawn(self, program: Program) -> None:
        # A restart counts as its spawn goes: one stopped in BACKOFF, or
        # while it waited for its core, made no domain and counts none.
        program.restarts += program.restarting
        program.restart_sent = program.restarting
        program.queued = program.restarting = False
        self._spawning[program.core] = self._spawning.get(program.core, 0) + 1
        program.sent_at = time.monotonic()
        self._request(Msg(_SPAWN_OP, core=program.core, payload=program.payload),
                      lambda m, p=program: self._spawn_answered(p, m))

    def _spawn_answered(self, program: Program, msg: Msg) -> None:
        """One of our spawns on its core is answered: the next waiting for
        that core goes. At most SPAWNS_PER_CORE of ours are in a worker's
        queue at once: crash loops do not queue other clients' spawns
        behind a hundred restarts."""
        core = program.core
        self._spawning[core] -= 1
        now = time.monotonic()
        # A rest before our next spawn there, while more than one wait for
        # the core: crash loops together take at most a third of a
        # worker's time (and of its CPU); one program restarts at once.
        self._rested[core] = now + min(REST_FACTOR * (now - program.sent_at), REST_MAX)
        self._drain(core)
        self._guarded(self._spawned, program, msg)

    def _spawned(self, program: Program, msg: Msg) -> None:
        program.spawn_err = msg.err
        if msg.err != Err.OK:           # EXEC_FAILED, INVALID_SPAWND (its worker gone) ...
            # The attempt is told as a start's would be, with why it failed:
            # each restart counted is a "restarted" event.
            self._event(EventKind.RESTARTED if program.restart_sent else EventKind.STARTED,
                        program, msg.err, dom=0)
            program.spawn_error = describe(msg.err, msg.status,
                                           msg.payload.decode("utf-8", "replace"))
            program.refused = msg.err in _REFUSED
            now = time.time()
            program.history.append({"domain": None, "pid": 0, "started": now, "ended": now,
                                    "error": program.spawn_error})
            return self._ended(program, failed=True, killed=False)
        program.domain, program.pid = (msg.dom, msg.nonce), msg.status
        program.started, program.up_since = time.time(), time.monotonic()
        if program.state == "STARTING":
            program.state = "RUNNING"
        self._event(EventKind.RESTARTED if program.restart_sent else EventKind.STARTED, program)
        if program.stopping:            # stopped while it was starting
            self._kill(program)
        self._request(Msg(_WAIT_OP, dom=msg.dom, nonce=msg.nonce),
                      lambda m, p=program: self._guarded(self._exited, p, m))

    def _exited(self, program: Program, msg: Msg) -> None:
        if msg.err == Err.BUSY:         # not an end: asked again, a little later
            dom_id, nonce = program.domain
            return self.call_later(0.1, lambda: self._request(
                Msg(_WAIT_OP, dom=dom_id, nonce=nonce),
                lambda m, p=program: self._guarded(self._exited, p, m)))
        dom = self.mgr.core.domain(program.domain[0]) or {}
        killed = bool(dom.get("killed"))
        if msg.err == Err.OK:
            signaled, status = bool(msg.flags & _SIGNALED), msg.status
        else:                           # not to be had: a failure all the same
            signaled, status = False, -1
            program.spawn_error = "its end could not be learned: " + describe(msg.err)
        program.last_exit = {"status": status, "signaled": signaled, "killed": killed,
                             "at": time.time()}
        program.history.append({"domain": program.domain[0], "pid": program.pid,
                                "started": program.started, "ended": time.time(),
                                "status": status, "signaled": signaled, "killed": killed})
        program.pid = 0
        if time.monotonic() - program.up_since >= program.policy.reset_after:
            program.quick_ends = 0
        failed = signaled or status != 0
        self._ended(program, failed=failed, killed=killed)

    def _event(self, kind: EventKind, program: Program, err: int = 0, dom: int | None = None
               ) -> None:
        """A program's event, into the core's log beside the domains'
        (events.py): its last incarnation's domain id (or ``dom``), its pid
        while it runs, and its restarts (an i32 on the wire: a loop with no
        intensity limit passes 2**31 after ~15 days at 1,600 a second)."""
        if dom is None:
            dom = program.domain[0] if program.domain is not None else 0
        self.mgr.core.record_event(kind, dom, program.core, program.pid,
                                   min(program.restarts, 0x7FFFFFFF), err, 0,
                                   program.name.encode("utf-8", "replace"))

    def _guarded(self, step, program: Program, msg: Msg) -> None:
        """A step of a program's life, from its answer's callback. A bug in
        it must not leave the program stuck with nobody told: it is
        printed, and the program given up (FATAL) in words."""
        try:
            step(program, msg)
        except Exception as e:          # noqa: BLE001 -- said, and the program settled
            import traceback
            traceback.print_exc()
            program.spawn_error = f"internal error in the supervisor: {e!r}"
            self._settle(program, "FATAL")

    def _ended(self, program: Program, failed: bool, killed: bool) -> None:
        """An incarnation ended (or never started): again, or settled."""
        policy = program.policy
        if program.stopping or killed:
            return self._settle(program, "STOPPED")
        if policy.restart == "no" or (policy.restart == "on-failure" and not failed):
            return self._settle(program, "EXITED")
        now = time.monotonic()
        while program.recent and now - program.recent[0] > policy.period:
            program.recent.popleft()
        if policy.max_restarts is not None and len(program.recent) >= policy.max_restarts:
            return self._settle(program, "FATAL")
        program.recent.append(now)
        program.quick_ends += 1
        delay = policy.delay(program.quick_ends)
        if program.refused:             # the core said no at once: not again at once
            delay = max(delay, REFUSED_DELAY)
        # Through the timer even with no delay: at most one restart per
        # program per pass of the loop, everyone else served between
        # (a restart sent from here, refused at once, spun the loop).
        program.state = "BACKOFF"
        self._event(EventKind.BACKOFF, program)
        program.timer = token = object()        # a stop or a start since voids it
        name = program.name
        self.call_later(delay, lambda: self._backoff_over(name, token))

    def _backoff_over(self, name: str, token) -> None:
        program = self.programs.get(name)       # by name: a removed one is let go
        if program is not None and program.state == "BACKOFF" and program.timer is token:
            program.restarting = True       # counted as its spawn goes (_send_spawn)
            self._start(program)

    def _stop(self, program: Program) -> None:
        if program.state in SETTLED:
            return self._settle(program, program.state)
        if not program.stopping:
            program.stopping = True
        if program.state == "BACKOFF" or program.queued:
            program.timer = None        # its callback finds it no longer due
            program.queued = False      # nor its core's queue
            return self._settle(program, "STOPPED")
        if program.state == "RUNNING" and program.domain is not None:
            self._kill(program)

    def _kill(self, program: Program) -> None:
        """The incarnation's kill: one, however many stops ask for it."""
        if not program.kill_sent:
            program.kill_sent = True
            self._request(Msg(_KILL_OP, dom=program.domain[0], nonce=program.domain[1]))
        # STARTING: _spawned kills it once it has its cap; either way its
        # end settles it (_exited, _ended).

    def _settle(self, program: Program, state: str, then_start: bool = False) -> None:
        """The program stays ``state``; those waiting for that are answered
        -- after it is forgotten (remove), or started again (restart)."""
        how = program.stopping
        if program.state != state:
            self._event(_SETTLED_EVENTS[state], program,
                        program.spawn_err if state == "FATAL" else 0)
        program.state, program.timer, program.stopping = state, None, False
        program.restarting = False
        waiters, program.settled_waiters = program.settled_waiters, []
        if how == "remove" and self.programs.pop(program.name, None) is not None:
            del self.names[bisect.bisect_left(self.names, program.name)]
            self.payload_bytes -= len(program.payload)
            self._event(EventKind.REMOVED, program)
        elif how == "restart" or then_start:
            program.recent.clear()
            program.quick_ends = 0
            self._start(program)
        body = _fitted(program)                 # encoded once for them all
        for client, msg in waiters:
            self._answer(client, msg, body=body)


_ACTIONS = {"supervise": Supervisor.supervise, "status": Supervisor.status,
            "list": Supervisor.list, "wait": Supervisor.wait, "stop": Supervisor.stop,
            "start": Supervisor.start, "restart": Supervisor.restart,
            "remove": Supervisor.remove}
_SPAWN_OP, _KILL_OP, _WAIT_OP, _SIGNALED = Op.SPAWN_WITH_CAPS, Op.KILL, Op.WAIT, Flag.SIGNALED
_SETTLED_EVENTS = {"STOPPED": EventKind.STOPPED, "EXITED": EventKind.FINISHED,
                   "FATAL": EventKind.GIVEN_UP}


def _encoded(body) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _fitted(program: Program) -> bytes:
    """The program's view as JSON within one answer (MAX_PAYLOAD): less
    history and fewer argv items until it fits -- never cut JSON."""
    for history, argv_items in ((HISTORY, 16), (3, 8), (1, 4), (0, 1), (0, 0)):
        data = _encoded(program.view(history, argv_items))
        if len(data) <= MAX_PAYLOAD:
            return data
    return _encoded({**program.view(0, 0), "last_exit": None, "error": "(too long to show)"})


def _shown(argv: list[str]) -> list[str]:
    """An argv as status shows it: 16 items of at most 200 characters (an
    answer is at most MAX_PAYLOAD bytes; a program's argv may be a MiB)."""
    return [a if len(a) <= 200 else a[:197] + "..." for a in argv[:16]]
