"""The process manager as a process: ``python -m procmgr.manager.server``.

Started by a Runtime (the monitor). It

- starts one spawnd worker per core, each its own child (so they die with
  it: PDEATHSIG) forked from a template (procmgr/manager/workers.py), each
  with a ring pair and a doorbell, and registers them;
- listens on a Unix socket in the runtime's owner-only directory. A client
  connects there; its uid is checked (SO_PEERCRED); the manager creates its
  ring pair and hands it over with its doorbell (an eventfd), all three as
  descriptors (SCM_RIGHTS). Every ring is a sealed memory file
  (ringbuf.Ring.create_sealed): nobody can shrink it under the manager (a
  SIGBUS would kill it), and it has no name, so nothing is ever left in
  /dev/shm. The socket stays open: its EOF is how the manager learns the
  client is gone. A client that shows the monitor token is the monitor;
- watches each worker's pidfd: a worker that dies is noticed at once, its
  pending requests fail with SPAWND_DIED, and its domains' process groups
  are killed (they would otherwise outlive it);
- on SIGTERM/SIGINT, or when its parent dies, stops its workers, which end
  every domain, and removes what it created.

What it and its workers print (diagnostics) goes to ``runtime.log`` in the
runtime's directory, never to a descriptor of whoever started it; the
domains' captured output goes to ``logs/`` beside it (spawnd_workers/_rotator.h).
It says it is ready by writing a line to ``--ready-fd`` and closing it.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

from procmgr import containment
from procmgr.manager.channel import Channel
from procmgr.protocol import LOG_BACKUPS, LOG_MAX_BYTES, SPAWN_MAX_PAYLOAD
from procmgr.manager.loop import EventLoop
from procmgr.manager.manager import Manager
from procmgr.manager.workers import WorkerProcess, WorkerTemplate
from procmgr.osutil import (
    ChildWatch, become_subreaper, children_of, claim_runtime_dir, die_with_parent,
    end_and_reap, kill_group, raise_fd_limit, reap_strays, refuse_ptrace, runtime_dir,
)
from ringbuf import Ring, RingError

RING_CAPACITY = 4096
HANDSHAKE_TIMEOUT = 2.0
# Connections held at once (clients and handshakes). Each costs the manager
# a pair of rings, 2 x 272 KiB of shared memory: the bound keeps what a
# flood of connections makes it create to ~550 MiB. Lower where the
# descriptor limit is: a client holds five of the manager's (its socket and
# the socket's waker, its doorbell, the two ring files), and a manager out
# of descriptors cannot take the next client's rings -- the cap says so
# first, in words (``max_clients``).
MAX_CLIENTS = 1024
FDS_PER_CLIENT = 5
# Connections one process may hold in their handshake at once: silent ones
# count against the cap until their deadline, and one process holding a
# thousand of them, reopened as they expire, kept everybody else out. (A
# user's many processes still could: the cap is the runtime's, not theirs.)
HANDSHAKES_PER_PROCESS = 64
# Descriptors kept free beyond the clients': a handshake's segment while it
# is mapped, a restarted worker's pipes and pidfd, /proc reads, the reserve.
SPARE_FDS = 16
LOG_EVERY = 10.0     # seconds between two lines about the same kind of refusal
ACCEPT_PAUSE = 0.1   # no descriptor to turn a connection away with: wait this long
RUNTIME_LOG = "runtime.log"     # the manager's and workers' diagnostics
LOGS = "logs"                   # the domains' captured output


class Server:
    def __init__(self, name: str, cores: int, pending: str, token: str,
                 kill_grace: float, pin: bool = True, simulate: bool = False,
                 log_bounds: tuple[int, int] | None = None, history: int = 4096,
                 events: int = 8192, cgroup: str | None = None):
        """``cgroup``: the runtime's cgroup, made by its owner (cgroup
        containment: procmgr/containment.py); None: tree containment."""
        self.simulate = simulate
        self.cgroup = cgroup
        # What a kill reaches here, as clients are told (Client.containment).
        self.containment = f"cgroup {cgroup}" if cgroup else "tree"
        self.name = name
        self.dir = runtime_dir(name)
        # Ours while we live (its lock, held by this descriptor until we
        # end), taken over if a runtime that is gone left it; a link planted
        # under the runtime's name is never followed (procmgr/osutil.py).
        self._dir_lock = claim_runtime_dir(self.dir)
        _diagnostics_to(RUNTIME_LOG, self._dir_lock)
        # Its workers' template (procmgr/manager/workers.py), first: it
        # imports their modules while we set up the rest. Its children are
        # re-parented to us: we must be a subreaper before it forks any.
        become_subreaper()
        self.template = WorkerTemplate(name)
        self.template.start()
        self.logs_dir = os.path.join(self.dir, LOGS)
        os.mkdir(LOGS, 0o700, dir_fd=self._dir_lock)
        self.log_bounds = log_bounds
        self.history = history
        self.mgr = Manager(pending=pending, history=history, events=events)
        self.loop = EventLoop(self.mgr)
        self.token = token
        self.kill_grace = kill_grace
        self.pin = pin
        self.workers: dict[int, WorkerProcess] = {}
        self.worker_doorbells: dict[int, int] = {}
        self._clients: dict[int, tuple[socket.socket, object]] = {}
        self._handshakes: dict[int, _Handshake] = {}
        self._said: dict[str, tuple[float, int]] = {}   # kind -> (last said, untold since)
        # Given up, at the descriptor limit, for the moment it takes to turn
        # a connection away (_turn_away); shutdown frees it first.
        self._reserve_fd = _open_reserve()
        self._accept_paused_until = 0.0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under another name and renamed once it listens: a socket
        # found under the name refuses nobody until the manager is going,
        # so connect() may read a refusal as "no such runtime" at once. The
        # backlog is as long as the kernel allows (net.core.somaxconn): a
        # burst of clients waits there for its turn, not told EAGAIN.
        path = os.path.join(self.dir, "manager.sock")
        self.sock.bind(path + ".new")
        self.sock.listen(socket.SOMAXCONN)
        os.rename(path + ".new", path)
        self.sock.setblocking(False)
        self.loop.watch(self.sock.fileno(), self._accept)
        # Domains of a worker that died are re-parented to us too (we became
        # a subreaper above): reap them.
        self.child_watch = ChildWatch()
        self.loop.watch(self.child_watch.read_fd, self._children_changed)
        self.mgr.start_spawnd = self.start_worker
        self.mgr.end_spawnd = self._end_worker
        self.mgr.worker_pids = lambda: {str(c): p.pid for c, p in self.workers.items()}
        for core in range(cores):
            self.start_worker(core)
        self._fds_at_start = len(os.listdir("/proc/self/fd"))

    # ---- workers ----

    def start_worker(self, core: int) -> None:
        requests = Ring.create_sealed(RING_CAPACITY, label=f"spawnd.{core}.requests")
        replies = Ring.create_sealed(RING_CAPACITY, label=f"spawnd.{core}.replies")
        doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ours = self.loop.peer_doorbell()        # the worker rings this one
        options = ["--core", str(core), "--kill-grace", str(self.kill_grace),
                   "--runtime", self.name, "--logs-dir", self.logs_dir,
                   "--history", str(self.history)]
        if self.log_bounds is not None:
            options += ["--log-max-bytes", str(self.log_bounds[0]),
                        "--log-backups", str(self.log_bounds[1])]
        if not self.pin:
            options.append("--no-pin")
        if self.simulate:
            options.append("--simulate")
        if self.cgroup is not None:
            options += ["--cgroup", self.cgroup]
        try:
            proc = self.template.fork(options, [requests.fileno(), replies.fileno(),
                                                doorbell, ours.fd])
        except BaseException:
            ours.close()
            os.close(doorbell)
            requests.close()
            replies.close()
            raise
        finally:
            requests.release_fd()         # the worker has its copies; the mappings stay
            replies.release_fd()
        requests.set_doorbell(doorbell)   # we push requests: ring the worker
        replies.set_doorbell(doorbell)    # we pop replies: ring it if it waits for room
        self.workers[core] = proc
        err = self.mgr.add_spawnd(core, Channel(replies, requests, f"spawnd.{core}", ours))
        assert err == 0, err
        self.worker_doorbells[core] = doorbell
        self.loop.watch(proc.pidfd, lambda fd, ev, core=core: self._worker_died(core))

    def _end_worker(self, core: int) -> None:
        """A worker that broke its ring (procmgr/manager/loop.py) is ended: its
        death, seen through its pidfd, fails what waited on it."""
        proc = self.workers.get(core)
        if proc is not None:
            proc.kill()

    def _worker_died(self, core: int) -> None:
        proc = self.workers.pop(core)
        self.loop.unwatch(proc.pidfd)
        proc.wait()
        # Its dispatchers are our grandchildren in their own groups: end
        # them, and under cgroup containment all they forked (the worker's
        # cgroup: spawnd_workers/worker.py).
        for dom_id in self.mgr.table.ids():
            dom = self.mgr.table.by_id(dom_id)
            if core in dom.live and core in dom.pids:
                kill_group(dom.pids[core])
        if self.cgroup is not None:
            try:
                containment.end_group(os.path.join(self.cgroup, f"core{core}.{proc.pid}"),
                                      between=self._children_changed_now)
            except OSError as e:        # a group tree its domains may have written to
                print(f"procmgr {self.name}: spawnd.{core}'s cgroup: {e}", file=sys.stderr)
        self.mgr.spawnd_died(core)
        os.close(self.worker_doorbells.pop(core))
        print(f"procmgr {self.name}: spawnd.{core} died ({proc.returncode})", file=sys.stderr)

    def _children_changed(self, fd, events) -> None:
        self.child_watch.drain()
        self._children_changed_now()

    def _children_changed_now(self) -> None:
        reap_strays(keep={p.pid for p in self.workers.values()} | {self.template.pid})

    # ---- clients ----

    def _accept(self, fd, events) -> None:
        """A client connects. The handshake is a few lines each way, driven
        by the loop like everything else: a client that is slow, silent or
        stopped mid-handshake never holds up anybody's answers."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self._turn_away(e)
            else:       # ECONNABORTED and the like: that connection only
                self._say("accept", f"accept failed: {e}")
            return
        conn.setblocking(False)
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except OSError as e:
            conn.close()
            self._say("accept", f"client refused: its credentials are unreadable: {e}")
            return
        pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            self._say("uid", f"client refused: uid {uid} is not the runtime's owner")
            conn.close()
            return
        cap = _client_cap(self._fds_at_start)
        starting = sum(hs.pid == pid for hs in self._handshakes.values())
        if starting >= HANDSHAKES_PER_PROCESS:
            why = (f"too many connections of process {pid} in their handshake at once "
                   f"(at most {HANDSHAKES_PER_PROCESS})")
            _tell(conn, why)
            conn.close()
            self._say("squat", f"client refused: {why}")
            return
        if len(self._clients) + len(self._handshakes) >= cap:
            why = f"too many clients: the runtime serves at most {cap} at once"
            _tell(conn, why)
            conn.close()
            self._say("cap", f"client refused (pid {pid}): {why}")
            return
        hs = _Handshake(conn, pid, time.monotonic() + HANDSHAKE_TIMEOUT)
        self._handshakes[conn.fileno()] = hs
        self.loop.watch(conn.fileno(), self._handshake_readable)

    def _turn_away(self, error: OSError) -> None:
        """Out of descriptors. The connection waiting keeps the listening
        socket readable -- the loop would spin on it -- and its client would
        wait for an answer that never comes: give up the reserve descriptor
        for as long as it takes to accept it, tell it why and close it, then
        take the reserve back. Clients already connected need no new
        descriptor and go on being served."""
        if self._reserve_fd >= 0:
            os.close(self._reserve_fd)
            self._reserve_fd = -1
        try:
            conn, _ = self.sock.accept()
        except OSError:
            conn = None
        if conn is not None:
            _tell(conn, f"the manager is out of file descriptors ({error.strerror}): "
                        "too many connections")
            conn.close()
        self._reserve_fd = _open_reserve()
        if conn is None or self._reserve_fd < 0:
            # Not even the reserve (the system's table is full): stop
            # watching the socket for a moment rather than spin on it.
            self.loop.unwatch(self.sock.fileno())
            self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
        self._say("descriptors", f"connection refused: out of file descriptors "
                                 f"({error.strerror}); clients connected are still served")

    def _resume_accepting(self) -> None:
        if self._reserve_fd < 0:
            self._reserve_fd = _open_reserve()
        self._accept_paused_until = 0.0
        self.loop.watch(self.sock.fileno(), self._accept)

    def _say(self, kind: str, line: str) -> None:
        """One line to the runtime log, but at most one per LOG_EVERY
        seconds for each kind: a flood of connections must not become a
        flood of log lines. The lines not written are counted in the next."""
        now = time.monotonic()
        last, untold = self._said.get(kind, (-LOG_EVERY, 0))
        if now - last < LOG_EVERY:
            self._said[kind] = (last, untold + 1)
            return
        if untold:
            line += f" (and {untold} more like it since the last such line)"
        print(f"procmgr {self.name}: {line}", file=sys.stderr)
        self._said[kind] = (now, 0)

    def _handshake_readable(self, fd, events) -> None:
        hs = self._handshakes[fd]
        try:
            line = hs.read_line()
            if line is None:
                return                      # the rest of the line is still to come
            if hs.rings is None:            # 1. hello -> our doorbell and the rings
                hello = json.loads(line)
                given = hello.get("token")
                # As bytes: compare_digest refuses a str that is not ASCII
                # (TypeError), and any client may send one.
                hs.monitor = bool(self.token) and isinstance(given, str) and \
                    secrets.compare_digest(given.encode(errors="surrogatepass"),
                                           self.token.encode())
                try:
                    # One at a time: the first is the handshake's (closed
                    # with it) even if the second cannot be made.
                    label = f"client@{hs.pid}"
                    hs.rings = (Ring.create_sealed(RING_CAPACITY, label=f"{label}.requests"),)
                    hs.rings += (Ring.create_sealed(RING_CAPACITY, label=f"{label}.responses"),)
                except (OSError, RingError) as e:    # out of descriptors or shared memory
                    self._drop_handshake(fd, f"client refused: its rings: {e}",
                                         tell=f"the manager cannot make the client's rings: {e}")
                    return
                # Its doorbell (its own: the loop looks at it when it rings),
                # then the two rings, in the order named.
                try:
                    hs.doorbell = self.loop.peer_doorbell(watch=False)   # once attached
                except OSError as e:
                    self._drop_handshake(fd, f"client refused: its doorbell: {e}",
                                         tell=f"the manager cannot make the client's doorbell: {e}")
                    return
                # long_payload: the longest payload taken (a client of an
                # older runtime, which says nothing, sends none past MAX_PAYLOAD).
                names = {"requests": hs.rings[0].name, "responses": hs.rings[1].name,
                         "long_payload": SPAWN_MAX_PAYLOAD,
                         "containment": self.containment}
                # A few dozen bytes into an empty socket buffer: never EAGAIN.
                try:
                    socket.send_fds(hs.conn, [json.dumps(names).encode() + b"\n"],
                                    [hs.doorbell.fd] + [r.fileno() for r in hs.rings])
                finally:
                    for ring in hs.rings:
                        ring.release_fd()   # the client has its copies (or is dropped)
                return
            if json.loads(line).get("attached") != 1:   # 2. attached -> a client
                raise ValueError("client did not attach")
        except (OSError, ValueError, KeyError, AttributeError, RecursionError) as e:
            self._drop_handshake(fd, f"client refused: {type(e).__name__}: {e}"[:300])
            return
        del self._handshakes[fd]
        self.loop.unwatch(fd)
        requests, responses = hs.rings
        doorbell, hs.doorbell = hs.doorbell, None   # the channel's now
        # The client's waker, for a client that sleeps in an event loop
        # rather than on its ring (procmgr/client/aio.py): it arms its
        # answers ring for a doorbell, and the answers ring this socket.
        # Ours is non-blocking, its own open file -- a client cannot make a
        # write to it wait -- and a full buffer is as good as a wake. A
        # second descriptor of it, the channel's: closed after its rings
        # (which ring it as they close), never left to a number reused.
        what = "doorbell"
        try:
            doorbell.watch()
            what = "waker"
            waker = os.dup(fd)
        except OSError as e:
            doorbell.close()
            self._say("handshake", f"client refused: its {what}: {e}")
            _tell(hs.conn, f"the manager cannot keep the client's {what}: {e}")
            hs.close()
            return
        responses.set_doorbell(waker)
        client = self.mgr.add_client(Channel(requests, responses, f"client@{hs.pid}", doorbell,
                                             waker=waker),
                                     is_monitor=hs.monitor)
        self._clients[fd] = (hs.conn, client)
        self.loop.watch(fd, self._client_readable)

    def _drop_handshake(self, fd: int, why: str, tell: str | None = None) -> None:
        """End a handshake; ``tell``: the reason, for a client that did
        nothing wrong (one that did is just closed on)."""
        hs = self._handshakes.pop(fd)
        self.loop.unwatch(fd)
        if tell is not None:
            _tell(hs.conn, tell)
        hs.close()
        self._say("handshake", why)

    def expire_handshakes(self) -> None:
        """Drop connections that did not finish the handshake in time."""
        now = time.monotonic()
        for fd in [fd for fd, hs in self._handshakes.items() if hs.deadline < now]:
            self._drop_handshake(fd, f"client refused: no handshake within {HANDSHAKE_TIMEOUT} s")

    def _client_readable(self, fd, events) -> None:
        conn, client = self._clients[fd]
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:     # ECONNRESET: it left with our bytes unread -- gone all the same
            data = b""
        if data:
            return          # nothing is said on the socket after the handshake
        self.loop.unwatch(fd)
        del self._clients[fd]
        conn.close()
        if client.alive:          # not already seen going through its rings
            self.mgr.client_gone(client)
            client.channel.close()

    # ---- the rest ----

    def run(self) -> None:
        while not self.mgr.stopping:
            # The loop serves in C for as long as nothing needs Python; these
            # rounds need it soon, so its wait is kept short while they have
            # work: handshakes to expire, accepting to resume.
            self.loop.run_once(0.05 if self._handshakes or self._accept_paused_until else 1.0)
            if self._handshakes:
                self.expire_handshakes()
            if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
                self._resume_accepting()

    def shutdown(self) -> None:
        # First what connections hold, and the reserve: the manager may be
        # at its descriptor limit (a flood of connections is one way there),
        # and what follows opens files (/proc, the directories rmtree walks).
        if self._reserve_fd >= 0:
            os.close(self._reserve_fd)
            self._reserve_fd = -1
        self.sock.close()       # a client connecting now is told: no such runtime
        for conn, _ in self._clients.values():
            conn.close()
        for hs in self._handshakes.values():
            hs.close()
        self._clients.clear()
        self._handshakes.clear()
        self.template.close()
        for proc in self.workers.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # What is left of ours is what dead workers left (re-parented to us,
        # killed in _worker_died) that the child watch has not come round
        # to: end and reap it now, or it outlives us as a zombie of our
        # owner's, which cannot tell it from a child of its own.
        end_and_reap(children_of())
        # The socket, the domains' logs, this log: nothing is left.
        shutil.rmtree(self.dir, ignore_errors=True)


def _diagnostics_to(name: str, dir_fd: int) -> None:
    """Our stdout and stderr -- and so our workers' -- become the runtime's
    log file: never a pipe or terminal of whoever started us, which a
    chatty program could fill or which may be gone. Made new in our
    directory (``dir_fd``, emptied when we claimed it): never through a link."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _open_reserve() -> int:
    """A descriptor held only to be given up (-1: none to be had)."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _client_cap(in_use: int) -> int:
    """MAX_CLIENTS, or fewer where the descriptor limit would run out first:
    what is left of the soft limit beyond the ``in_use`` descriptors the
    manager and its workers' set-up took, less a spare, a client's
    FDS_PER_CLIENT descriptors each. Read at each connection: the limit of a running
    manager may be changed (prlimit)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CLIENTS
    return max(1, min(MAX_CLIENTS, (soft - in_use - SPARE_FDS) // FDS_PER_CLIENT))


def _tell(conn: socket.socket, why: str) -> None:
    """Say why a connection is refused, in the line a hello is answered
    with, if it fits without waiting (it always does in a new connection's
    empty buffer); a refusal never makes the manager wait."""
    try:
        conn.send(json.dumps({"error": why}).encode() + b"\n", socket.MSG_DONTWAIT)
    except OSError:
        pass


class _Handshake:
    """A connection on its way to being a client: hello, then attached."""

    __slots__ = ("conn", "pid", "deadline", "buf", "rings", "monitor", "doorbell")

    def __init__(self, conn: socket.socket, pid: int, deadline: float):
        self.conn, self.pid, self.deadline = conn, pid, deadline
        self.buf = b""
        self.rings: tuple[Ring, Ring] | None = None
        self.monitor = False
        self.doorbell = None      # loop.PeerDoorbell, once it has one

    def read_line(self) -> bytes | None:
        """The next whole line, or None until it has all arrived."""
        try:
            chunk = self.conn.recv(4096)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            raise ValueError("connection closed during the handshake")
        self.buf += chunk or b""
        if len(self.buf) > 65536:
            raise ValueError("handshake line too long")
        line, sep, rest = self.buf.partition(b"\n")
        if not sep:
            return None
        self.buf = rest
        return line

    def close(self) -> None:
        for ring in self.rings or ():
            ring.close()
        if self.doorbell is not None:
            self.doorbell.close()
        self.conn.close()


def main(argv: list[str] | None = None) -> int:
    # First: no other process of the user may look inside (procmgr/osutil.py).
    refuse_ptrace()
    ap = argparse.ArgumentParser(prog="python -m procmgr.manager.server")
    ap.add_argument("--name", required=True)
    ap.add_argument("--parent-pid", type=int, default=-1,
                    help="the pid of the process starting us: we end with it")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--pending", default="replyq", choices=["replyq", "hashtable"])
    ap.add_argument("--kill-grace", type=float, default=0.2)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--simulate", action="store_true",
                    help="workers record dispatchers without starting processes")
    ap.add_argument("--token-fd", type=int, default=-1,
                    help="a pipe holding the monitor's token (no token: no monitor)")
    ap.add_argument("--ready-fd", type=int, default=-1,
                    help="a pipe to write 'ready' to, then close")
    ap.add_argument("--history", type=int, default=4096,
                    help="ended domains remembered, with their logs")
    ap.add_argument("--events", type=int, default=8192,
                    help="the newest events kept for clients to ask for")
    ap.add_argument("--log-max-bytes", type=int, help="a captured stream's file size bound")
    ap.add_argument("--log-backups", type=int, help="rotated files kept per stream")
    ap.add_argument("--cgroup", help="the runtime's cgroup, made by its owner "
                                     "(none: tree containment)")
    args = ap.parse_args(argv)
    server = None

    def stop(signum, frame):
        if server is None:
            raise SystemExit(1)     # still starting: the workers die with us
        server.loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # SIGTERM, not SIGKILL, when the process that started us dies (even by
    # SIGKILL): the loop stops and shutdown ends every domain and worker.
    die_with_parent(signal.SIGTERM, None if args.parent_pid < 0 else args.parent_pid)
    raise_fd_limit()        # FDS_PER_CLIENT descriptors a client: the cap follows
    token = ""
    if args.token_fd >= 0:
        with os.fdopen(args.token_fd, "rb") as f:
            token = f.read(256).decode()
    if args.ready_fd >= 0:
        os.set_inheritable(args.ready_fd, False)   # never a worker's or a domain's
    bounds = None
    if args.log_max_bytes is not None or args.log_backups is not None:
        bounds = (args.log_max_bytes or LOG_MAX_BYTES,
                  LOG_BACKUPS if args.log_backups is None else args.log_backups)
    try:
        server = Server(args.name, args.cores, args.pending, token, args.kill_grace,
                        pin=not args.no_pin, simulate=args.simulate, log_bounds=bounds,
                        history=args.history, events=args.events, cgroup=args.cgroup)
    except Exception as e:
        # Said to whoever waits for us (the traceback is in the runtime log).
        if args.ready_fd >= 0:
            os.write(args.ready_fd, f"error: {type(e).__name__}: {e}\n".encode()[:1000])
        raise
    # Everything made so far (modules, the server, its workers' state) lives
    # as long as the manager: out of the collector's way. Measured: full
    # collections walking it cost the control plane ~15% of its requests/s.
    gc.freeze()
    # Every request allocates a few containers that outlive it (a domain's
    # sets and lists live until it is retired): at the default threshold of
    # 700 a young collection runs every few dozen requests. Ten thousand
    # keeps the same bound on cyclic garbage, collected ~15x less often.
    # Measured (callgrind, whole control plane): 5% of its instructions.
    gc.set_threshold(10_000, 10, 10)
    if args.ready_fd >= 0:
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    try:
        server.run()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
