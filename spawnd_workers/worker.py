"""The spawnd worker of one simulated core: a real OS process, pinned to a
CPU, that starts, kills and reaps real programs (the domains' dispatchers).

Single-threaded and event driven. It sleeps in one epoll on

- its doorbell (an eventfd the manager rings after pushing a request while
  the worker had armed its request ring), and
- one pidfd per running dispatcher, readable the moment that process exits:
  the exit is reaped at once and reported, with no SIGCHLD handler and no
  race with a reused pid.

Requests are served in arrival order and each gets exactly one reply,
pushed in the same order (the manager checks the sequence numbers).

How a dispatcher learns who it is: its environment carries
``PROCMGR_DOMAIN_ID`` (the domain id), ``PROCMGR_CORE`` (this core),
``PROCMGR_DISPATCHER`` (0 for the spawned one, 1 for a span) and
``PROCMGR_RUNTIME`` (the runtime's name: how the Runtime recognises, and
ends, domains orphaned by a manager that was killed). The cap's nonce is
not given: only the spawner holds it.

What a dispatcher inherits: argv and env as given (env None: the worker's
environment), the caps as given, stdin from /dev/null unless a cap names
fd 0, and stdout/stderr of the runtime unless caps name them. No other
descriptor: the runtime's own are close-on-exec.

Every dispatcher runs in its own process group, so a kill (SIGTERM, then
SIGKILL after the grace period) also ends whatever the program forked.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time
from dataclasses import dataclass

from procmgr.errors import Err
from procmgr.osutil import (
    ChildWatch, become_subreaper, children_of, die_with_parent, end_and_reap, kill_group,
    reap_strays, watch_doorbell,
)
from procmgr.protocol import (
    Decoder, Flag, Msg, Op, ProtocolError, SpawnArgs, send, take,
)
from ringbuf import Closed, Ring

DEFAULT_KILL_GRACE = 0.2
# How long a kill waits for the last members of a group it SIGKILLed to die.
GROUP_GONE_TIMEOUT = 1.0
_CAP_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "rw": os.O_RDWR | os.O_CREAT,
}
# Variables of the runtime itself, never passed on to a domain.
_INTERNAL_ENV = ("PROCMGR_DOMAIN_ID", "PROCMGR_CORE", "PROCMGR_DISPATCHER", "PROCMGR_RUNTIME")


@dataclass
class Dispatcher:
    dom: int
    nonce: int
    pid: int
    pidfd: int
    span: bool


class Worker:
    def __init__(self, core: int, requests: Ring, replies: Ring, doorbell: int,
                 kill_grace: float = DEFAULT_KILL_GRACE, runtime: str = "",
                 simulate: bool = False):
        self.core = core
        self.runtime = runtime
        # Simulated dispatchers: recorded, never started (control-plane
        # measurements; every figure taken this way says so).
        self.simulate = simulate
        self.simulated: dict[int, int] = {}      # dom -> fake pid
        self._next_fake_pid = 1 << 22
        self.requests = requests      # we consume
        self.replies = replies        # we produce
        # Replies to a batch of requests wake the manager once, after the
        # batch (see "Batched wakes" in ringbuf/_ring.h).
        replies.batch_wakes(True)
        self.doorbell = doorbell
        self.kill_grace = kill_grace
        self.decoder = Decoder()
        self.dispatchers: dict[int, Dispatcher] = {}       # dom -> its dispatcher here
        self.by_pidfd: dict[int, Dispatcher] = {}
        self.epoll = select.epoll()
        watch_doorbell(self.epoll, doorbell)
        # What a domain forked and left behind is re-parented to us: reap it.
        become_subreaper()
        self.child_watch = ChildWatch()
        self.epoll.register(self.child_watch.read_fd, select.EPOLLIN)
        self.stopping = False
        self.served = 0
        # Read once: os.environ decodes every entry on each access.
        self._env = {k: v for k, v in os.environ.items() if k not in _INTERNAL_ENV}

    # ---- the loop ----

    def run(self) -> None:
        while not self.stopping:
            served = self.serve_requests()
            self.replies.wake_consumer()   # for this batch and the exits before it
            if served:
                continue
            if self.requests.arm():
                continue
            try:
                events = self.epoll.poll(1.0)
            except InterruptedError:
                events = []
            finally:
                self.requests.disarm()
            children_changed = False
            for fd, _ in events:
                if fd in self.by_pidfd:     # (the doorbell is only a wake-up)
                    self.exited(self.by_pidfd[fd])
                elif fd == self.child_watch.read_fd:
                    children_changed = True
            # After the dispatchers' own exits: the SIGCHLD they caused then
            # finds nothing left to reap, at the cost of one system call.
            if children_changed:
                self.child_watch.drain()
                reap_strays(keep={d.pid for d in self.dispatchers.values()})

    def serve_requests(self) -> int:
        n = 0
        for msg in take(self.requests, self.decoder):
            if isinstance(msg, ProtocolError):
                print(f"spawnd.{self.core}: bad request: {msg.detail}", file=sys.stderr)
                continue
            self.reply(HANDLERS.get(msg.op, Worker.unknown)(self, msg))
            n += 1
        return n

    def reply(self, msg: Msg) -> None:
        # The manager keeps at most its reply queue's worth of requests in
        # flight, and the reply ring holds that many: waiting here is rare
        # and short; a dead manager ends it (and us) through PeerDied.
        while not send(self.replies, msg):
            self.replies.wake_consumer()
            self.replies.wait_space(1.0)
        self.served += 1

    # ---- requests ----

    def unknown(self, msg: Msg) -> Msg:
        return msg.reply(Err.UNKNOWN_OP)

    def spawn(self, msg: Msg) -> Msg:
        return self._start(msg, span=False)

    def span(self, msg: Msg) -> Msg:
        return self._start(msg, span=True)

    def _start(self, msg: Msg, span: bool) -> Msg:
        if msg.dom in self.dispatchers or msg.dom in self.simulated:
            return msg.reply(Err.ALREADY_SPANNED)
        if self.simulate:
            self._next_fake_pid += 1
            self.simulated[msg.dom] = self._next_fake_pid
            return msg.reply(Err.OK, self._next_fake_pid)
        try:
            args = SpawnArgs.decode(msg.payload)
        except ProtocolError as e:
            return msg.reply(e.code, payload=e.detail.encode()[:256])
        env = dict(self._env if args.env is None else args.env)
        for key in _INTERNAL_ENV:
            env.pop(key, None)
        env.update(PROCMGR_DOMAIN_ID=str(msg.dom), PROCMGR_CORE=str(self.core),
                   PROCMGR_DISPATCHER=str(int(span)), PROCMGR_RUNTIME=self.runtime)
        actions = [(os.POSIX_SPAWN_OPEN, fd, path, _CAP_FLAGS[mode], 0o600)
                   for fd, mode, path in args.caps]
        if all(fd != 0 for fd, _, _ in args.caps):
            # Nobody reads a domain's terminal input: stdin is /dev/null.
            actions.insert(0, (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        try:
            pid = os.posix_spawn(
                args.path, args.argv or [args.path], env, file_actions=actions,
                setpgroup=0, setsigdef=_ALL_SIGNALS, setsigmask=())
        except OSError as e:
            return msg.reply(Err.EXEC_FAILED, e.errno or errno.EIO,
                             payload=f"{args.path}: {e.strerror}".encode()[:256])
        except (ValueError, TypeError) as e:   # refused before any system call
            return msg.reply(Err.EXEC_FAILED, errno.EINVAL,
                             payload=f"{args.path}: {e}".encode()[:256])
        pidfd = os.pidfd_open(pid)
        d = Dispatcher(msg.dom, msg.nonce, pid, pidfd, span)
        self.dispatchers[msg.dom] = d
        self.by_pidfd[pidfd] = d
        self.epoll.register(pidfd, select.EPOLLIN)
        return msg.reply(Err.OK, pid)

    def kill(self, msg: Msg) -> Msg:
        if self.simulated.pop(msg.dom, None) is not None:
            return msg.reply(Err.OK, flags=Flag.RELEASED)
        d = self.dispatchers.get(msg.dom)
        if d is None:
            return msg.reply(Err.NOT_FOUND)
        try:
            self._end(d)
        except OSError as e:
            return msg.reply(Err.KILL_FAILED, e.errno or errno.EIO)
        return msg.reply(Err.OK, flags=Flag.RELEASED)      # reaped and forgotten

    def cleanup(self, msg: Msg) -> Msg:
        """Release the domain here; a dispatcher still running is ended first."""
        d = self.dispatchers.get(msg.dom)
        if d is not None:
            self._end(d)
        return msg.reply(Err.OK)

    # ---- processes ----

    def _end(self, d: Dispatcher) -> None:
        """SIGTERM the dispatcher's process group, SIGKILL it after the grace
        period, reap the dispatcher, forget it -- and return only once no
        process of its group is left (bounded), so a kill's reply means it."""
        kill_group(d.pid, signal.SIGTERM)
        if not _wait_readable(d.pidfd, self.kill_grace):
            kill_group(d.pid, signal.SIGKILL)
            _wait_readable(d.pidfd, None)
        # Whatever the program forked dies with it, even if it outlived TERM.
        kill_group(d.pid, signal.SIGKILL)
        self._reap(d)
        self._wait_group_gone(d.pid)

    def _wait_group_gone(self, pgid: int, timeout: float = GROUP_GONE_TIMEOUT) -> None:
        """Until the group is empty: a SIGKILLed process takes a moment to
        die, and those of its members re-parented to us (we are a subreaper)
        stay in it as zombies until we reap them. Usually one system call:
        a program that forked nothing left nobody behind."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() >= deadline:
                return      # not ours to wait for any longer; the reply goes out
            reap_strays(keep={d.pid for d in self.dispatchers.values()})
            time.sleep(0.001)

    def exited(self, d: Dispatcher) -> None:
        """A dispatcher ended by itself: reap it and tell the manager -- and
        wake it at once: whoever waits for this exit waits on us, and the
        rest (its group, our tables) can come after."""
        pid, status = os.waitpid(d.pid, os.WNOHANG)   # the loop never blocks here
        if pid == 0:
            return      # not exited after all: a report about a closed pidfd (see _forget)
        if os.WIFSIGNALED(status):
            code, flags = os.WTERMSIG(status), Flag.SIGNALED
        else:
            code, flags = os.WEXITSTATUS(status), 0
        self.reply(Msg(Op.SD_EXIT, core=self.core, dom=d.dom, nonce=d.nonce,
                       status=code, flags=flags | Flag.RELEASED))
        self.replies.wake_consumer()
        kill_group(d.pid, signal.SIGKILL)    # no orphan left behind
        self._forget(d)

    def _reap(self, d: Dispatcher) -> int:
        _, status = os.waitpid(d.pid, 0)
        self._forget(d)
        return status

    def _forget(self, d: Dispatcher) -> None:
        del self.by_pidfd[d.pidfd]
        self.dispatchers.pop(d.dom, None)
        # Unregister before closing: closing alone does not take the pidfd
        # out of the epoll set while another reference to it lives -- and a
        # program we just started holds copies of all our descriptors until
        # its exec has closed them, which can be after posix_spawn returned
        # to us. Meanwhile the number is reused for the next pidfd, and the
        # old registration reports the dead process under the new number.
        self.epoll.unregister(d.pidfd)
        os.close(d.pidfd)

    def shutdown(self) -> None:
        """End every dispatcher (no grace: the runtime is going away), and
        every orphan of theirs re-parented to us (we are a subreaper): none
        is handed on up, alive or as a zombie."""
        for d in list(self.dispatchers.values()):
            kill_group(d.pid, signal.SIGKILL)
            self._reap(d)
        deadline = time.monotonic() + 5
        while (strays := children_of()) and time.monotonic() < deadline:
            end_and_reap(strays)


HANDLERS = {
    Op.SD_SPAWN: Worker.spawn,
    Op.SD_SPAN: Worker.span,
    Op.SD_KILL: Worker.kill,
    Op.SD_CLEANUP: Worker.cleanup,
}

_ALL_SIGNALS = tuple(s for s in signal.valid_signals()
                     if s not in (signal.SIGKILL, signal.SIGSTOP))


def _wait_readable(fd: int, timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ready, _, _ = select.select([fd], [], [], left)
            return bool(ready)
        except InterruptedError:
            continue


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m spawnd_workers")
    ap.add_argument("--core", type=int, required=True)
    ap.add_argument("--requests", required=True, help="request ring (we consume)")
    ap.add_argument("--replies", required=True, help="reply ring (we produce)")
    ap.add_argument("--doorbell-fd", type=int, required=True,
                    help="our eventfd, rung by the manager")
    ap.add_argument("--manager-doorbell-fd", type=int, default=-1,
                    help="the manager's eventfd, rung when we reply")
    ap.add_argument("--kill-grace", type=float, default=DEFAULT_KILL_GRACE)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--runtime", default="", help="the runtime's name, given to domains")
    ap.add_argument("--simulate", action="store_true",
                    help="record dispatchers without starting processes (measurements)")
    args = ap.parse_args(argv)
    worker = None

    def stop(signum, frame):
        if worker is None:
            raise SystemExit(1)     # no domain started yet: nothing to end
        worker.stopping = True
        os.eventfd_write(args.doorbell_fd, 1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # SIGTERM when the manager dies, however it dies: our domains are ended
    # (shutdown) before we go, so none is left to init.
    die_with_parent(signal.SIGTERM)
    if not args.no_pin:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[args.core % len(cpus)]})
    # Inherited descriptors stay ours: nothing of the runtime leaks into domains.
    for fd in (args.doorbell_fd, args.manager_doorbell_fd):
        if fd >= 0:
            os.set_inheritable(fd, False)
    requests, replies = Ring.attach(args.requests), Ring.attach(args.replies)
    if args.manager_doorbell_fd >= 0:
        requests.set_doorbell(args.manager_doorbell_fd)
        replies.set_doorbell(args.manager_doorbell_fd)
        # Attached: the manager may unlink the names now.
        os.eventfd_write(args.manager_doorbell_fd, 1)
    worker = Worker(args.core, requests, replies, args.doorbell_fd, args.kill_grace,
                    args.runtime, args.simulate)
    try:
        worker.run()
    except Closed:
        pass          # the manager went away: so do we, with our domains
    finally:
        worker.shutdown()
        requests.close()
        replies.close()
    return 0
