"""Starting a runtime and connecting to one.

    with procmgr.Runtime(cores=4) as rt:
        pm = rt.client()
        d = pm.spawn(["/bin/true"])
        pm.wait(d)                      # 0

``Runtime`` is the monitor: it starts the manager process (which starts one
spawnd worker per core), holds the monitor binding, and on exit -- or
Ctrl-C -- stops everything: domains killed and reaped, workers and manager
gone, segments unlinked. Other processes reach a runtime by its name with
``procmgr.connect(name)``.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

from procmgr import containment as _containment
from procmgr.client.client import Client
from procmgr.errors import RuntimeRefused
from procmgr.client.logs import LOG_BACKUPS, LOG_MAX_BYTES, stream_caps
from procmgr.protocol import MAX_PAYLOAD
from procmgr.osutil import (
    become_subreaper, children_of, end_and_reap, remove_dead_runtime_dir, runtime_dir,
    runtime_dir_in_use, wait_readable,
)
from ringbuf import Ring, RingError

START_TIMEOUT = 30.0
CONNECT_BACKOFF_MAX = 0.05   # longest pause between two tries at a full backlog
CLIENT_FDS = 4               # a client's: its socket, the doorbell, two ring mappings
# How long the workers of a dead manager get to end their domains themselves.
WORKER_CLEANUP_TIMEOUT = 5.0


def _pgid(pid: int) -> int:
    """Process group of a pid, zombies included (their stat is still there)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return -1


class _Subreaping:
    """This process is a child subreaper while it runs a Runtime, and goes
    back to what it was when its last Runtime has closed: afterwards, an
    unrelated orphan (a daemon a user's program starts, say) goes to init,
    not to a program that does not expect to reap it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open = 0
        self._was = False

    def acquire(self) -> None:
        with self._lock:
            if self._open == 0:
                self._was = become_subreaper(True)
            self._open += 1

    def release(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0 and not self._was:
                become_subreaper(False)


_SUBREAPER = _Subreaping()


def _read_line(fd: int, timeout: float) -> bytes:
    """One line from a pipe, waiting at most ``timeout`` seconds in all;
    what came before EOF or the deadline otherwise."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        left = deadline - time.monotonic()
        if left <= 0 or not wait_readable(fd, left):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


class RuntimeNotFound(ConnectionError):
    """No runtime of that name is running (for this user)."""


def connect(name: str, _token: str = "", timeout: float = START_TIMEOUT) -> Client:
    """A new client of the runtime called ``name``, with its own ring pair.

    ``timeout`` bounds getting in, however busy the manager is. Raises
    RuntimeNotFound at once if no such runtime runs; RuntimeRefused if it
    runs but will not take this client (the message says why); OSError
    EMFILE if this process is out of descriptors (a client holds four)."""
    deadline = time.monotonic() + timeout
    directory = runtime_dir(name)
    try:
        sock = _connected(os.path.join(directory, "manager.sock"), name, deadline)
    except OSError as e:
        raise _descriptors_said(e, name) from None
    doorbell = -1
    given: list[int] = []          # received, not yet the rings' or the doorbell's
    rings: list[Ring] = []
    try:
        try:
            sock.sendall(json.dumps({"hello": 1, "token": _token}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass            # turned away at once: why is in the answer still to be read
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            # The manager's doorbell, then our two rings (sealed memory files).
            msg, given, flags, _ = socket.recv_fds(sock, 4096, 3)
        except ConnectionResetError:
            msg, given, flags = b"", [], 0
        if flags & socket.MSG_CTRUNC:
            # Sent; the kernel could not give them all a number here.
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        if given:
            doorbell = given.pop(0)
            os.set_inheritable(doorbell, False)
        if not msg:
            raise RuntimeRefused(f"runtime {name!r} closed the connection during the handshake "
                                 f"(its {os.path.join(directory, 'runtime.log')} says why)")
        try:
            answer = json.loads(msg)
            if "error" in answer:
                raise RuntimeRefused(f"runtime {name!r} refused the connection: "
                                     f"{answer['error']}")
            names = (answer["requests"], answer["responses"])
            long_limit = int(answer.get("long_payload", MAX_PAYLOAD))
            contained = str(answer.get("containment", ""))
        except (ValueError, KeyError, TypeError):
            raise RuntimeRefused(f"runtime {name!r} answered the handshake with something "
                                 f"other than a procmgr manager's answer: {msg[:200]!r}") from None
        if doorbell < 0 or len(given) != 2:
            raise RuntimeRefused(f"runtime {name!r} sent {len(given) + (doorbell >= 0)} "
                                 "descriptors with its answer, not its doorbell and two rings")
        while given:
            rings.append(Ring.attach_fd(given.pop(0), names[len(rings)]))
        requests, responses = rings
        requests.set_doorbell(doorbell)     # we push requests: ring the manager
        responses.set_doorbell(doorbell)    # we pop answers: ring it if it waits for room
        sock.sendall(b'{"attached": 1}\n')
    except BaseException as e:
        # Whatever failed, nothing of the attempt stays open in this process.
        for ring in rings:
            ring.close()
        for fd in given + ([doorbell] if doorbell >= 0 else []):
            os.close(fd)
        sock.close()
        if isinstance(e, socket.timeout):
            raise TimeoutError(f"runtime {name!r} did not answer the handshake "
                               f"within {timeout} s") from None
        if isinstance(e, OSError):
            raise _descriptors_said(e, name) from None
        raise
    sock.settimeout(None)
    return Client(requests, responses, connection=sock, doorbell=doorbell,
                  logs_dir=os.path.join(directory, "logs"), long_limit=long_limit,
                  containment=contained)


def _connected(path: str, name: str, deadline: float) -> socket.socket:
    """A socket connected to the manager's. A full backlog (a burst of
    clients, or a flood, faster than the manager accepts) is waited out
    until ``deadline``: room comes as it accepts. A refusal is not: the
    manager's socket appears under its name only once it listens and
    stops listening only as it goes, so a refusal means no manager."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    delay = 0.001
    try:
        while True:
            # Non-blocking with a timeout: for a Unix socket a full backlog
            # is EAGAIN at once, never a wait in connect.
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.connect(path)
                return sock
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"runtime {name!r} did not take the connection in time: "
                                       "its backlog stayed full") from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, CONNECT_BACKOFF_MAX)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        raise RuntimeNotFound(f"no procmgr runtime named {name!r} is running") from None
    except BaseException:
        sock.close()
        raise


def _descriptors_said(e: OSError, name: str) -> OSError:
    """``e``, or for a lack of descriptors here the same errno in words that
    say whose: this process's, not the runtime's."""
    code = e.errno
    if code == errno.EMFILE:
        return OSError(code, f"cannot connect to runtime {name!r}: too many open files in "
                             f"this process (a client holds {CLIENT_FDS} descriptors)")
    if code == errno.ENFILE:
        return OSError(code, f"cannot connect to runtime {name!r}: too many open files "
                             "in the system")
    return e


def _taken(directory: str, name: str) -> str | None:
    """Why a runtime cannot be started under ``name``, whose path exists;
    None if a runtime that is gone left it (the new one takes it over)."""
    if os.path.islink(directory):
        return f"cannot start runtime {name!r}: a symbolic link has its name; remove it"
    if not os.path.isdir(directory):
        return f"cannot start runtime {name!r}: a file has its name; remove it"
    if runtime_dir_in_use(directory):
        return f"cannot start runtime {name!r}: a runtime of that name is running"
    return None


class Runtime:
    def __init__(self, cores: int = 4, pending: str = "replyq", name: str | None = None,
                 kill_grace: float = 0.2, pin: bool = True, simulate: bool = False,
                 log_max_bytes: int = LOG_MAX_BYTES, log_backups: int = LOG_BACKUPS,
                 history: int = 4096, events: int = 8192, containment: str = "auto"):
        """``simulate``: workers record dispatchers without starting
        processes -- for measuring the control plane alone.
        ``log_max_bytes``, ``log_backups``: a captured stream's file is
        rotated at that size and that many rotated files kept, unless a
        spawn says otherwise (procmgr/client/logs.py). ``history``: how many ended
        domains are remembered, for a late wait or status and their logs.
        ``events``: how many of the newest events are kept for
        ``Client.events`` (a consumer further behind is told it lost some).
        ``containment``: what a kill and a domain's end reach --
        "cgroup" (a cgroup v2 group per dispatcher: everything it forked),
        "tree" (its process tree, as far as the worker can see it), or
        "auto" (cgroup where the cgroup v2 hierarchy can be written here,
        else tree); procmgr/containment.py says how each works. Asking for
        "cgroup" where it cannot be had is an error. ``containment_mode``
        says which runs."""
        if type(history) is not int or history < 1:
            raise ValueError(f"history must be an int >= 1, not {history!r}")
        if type(events) is not int or not 1 <= events <= 1 << 24:
            raise ValueError(f"events must be an int from 1 to {1 << 24}, not {events!r}")
        self.history = history
        self.events = events
        stream_caps(log_max_bytes=log_max_bytes, log_backups=log_backups)  # checked now
        self.log_bounds = (log_max_bytes, log_backups)
        self.simulate = simulate
        self.containment_mode, self._cgroup_parent = _containment.choose(containment)
        self.cgroup: str | None = None       # the runtime's cgroup, once made
        self.cores = cores
        self.pending = pending
        self.name = name or f"rt-{os.getpid()}-{secrets.token_hex(4)}"
        self.kill_grace = kill_grace
        self.pin = pin
        self.proc: subprocess.Popen | None = None
        self.monitor: Client | None = None
        self._clients: list[Client] = []
        self._workers: dict[int, int] = {}    # pid -> pidfd
        self._dir_id: tuple[int, int] | None = None  # (st_dev, st_ino) of our manager's directory

    def start(self) -> Runtime:
        # Said here, in a line, rather than by a manager that "did not
        # start": an unsafe directory of runtimes, or this one's name taken.
        directory = runtime_dir(self.name)
        taken = _taken(directory, self.name) if os.path.lexists(directory) else None
        if taken is not None:
            raise FileExistsError(errno.EEXIST, taken, directory)
        token = secrets.token_hex(16)
        # The monitor's token goes to the manager through a pipe: in its
        # environment or argv any process of the user could read it in /proc.
        token_r, token_w = os.pipe()
        os.write(token_w, token.encode())
        os.close(token_w)
        # It says "ready" on a pipe of its own that it closes then: never on
        # its stdout, which its workers and their programs would inherit.
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, "-m", "procmgr.manager.server", "--name", self.name,
               "--parent-pid", str(os.getpid()),
               "--cores", str(self.cores), "--pending", self.pending,
               "--kill-grace", str(self.kill_grace), "--token-fd", str(token_r),
               "--ready-fd", str(ready_w), "--log-max-bytes", str(self.log_bounds[0]),
               "--log-backups", str(self.log_bounds[1]), "--history", str(self.history),
               "--events", str(self.events)]
        if not self.pin:
            cmd.append("--no-pin")
        if self.simulate:
            cmd.append("--simulate")
        if self._cgroup_parent is not None:
            # Made here, by the owner, who ends it however the manager ends.
            self.cgroup = _containment.make_runtime_group(self._cgroup_parent, self.name)
            cmd += ["--cgroup", self.cgroup]
        # Orphans of a killed manager (its workers, then their domains) are
        # re-parented to us rather than to init, so the guard can end them.
        _SUBREAPER.acquire()
        try:
            # Its stderr stays ours until it has its runtime log: what stops
            # it from starting is said here. A session of its own: a
            # terminal's Ctrl-C (SIGINT to our process group) reaches us,
            # not the manager and its workers, so the owner's cleanup in
            # `except KeyboardInterrupt` (a kill, a wait) still has a
            # runtime to talk to, and `close` ends it in order. It still
            # ends when we do (PDEATHSIG), however we end.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL,
                                         pass_fds=(token_r, ready_w), env=dict(os.environ),
                                         start_new_session=True)
        except BaseException:
            _SUBREAPER.release()
            os.close(ready_r)
            if self.cgroup is not None:
                _containment.remove(self.cgroup)
            raise
        finally:
            os.close(token_r)
            os.close(ready_w)
        self._guard = threading.Thread(target=self._guard_manager, args=(self.proc.pid,),
                                       name=f"procmgr-guard-{self.name}", daemon=True)
        self._guard.start()
        try:
            ready = _read_line(ready_r, START_TIMEOUT)
        finally:
            os.close(ready_r)
        if ready.strip() != b"ready":
            self.close()
            why = ready.decode(errors="replace").strip() or \
                f"no word from it within {START_TIMEOUT:.0f} s"
            raise RuntimeError(f"the manager of runtime {self.name!r} did not start: {why}")
        st = os.lstat(runtime_dir(self.name))      # the manager claimed it: ready says so
        self._dir_id = (st.st_dev, st.st_ino)
        self._note_workers()
        self.monitor = connect(self.name, token)
        return self

    def _note_workers(self) -> None:
        """Remember the manager's workers by pidfd, so that after a crash of
        the manager the guard waits for exactly them to be gone before it
        looks for the domains they leave behind."""
        for pid in children_of(self.proc.pid):
            if pid not in self._workers:
                try:
                    self._workers[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    pass

    def _guard_manager(self, manager_pid: int) -> None:
        """Wait for the manager to end, however it ends; then make sure
        nothing of the runtime is left (a no-op after a clean shutdown)."""
        pidfd = os.pidfd_open(manager_pid)
        try:
            wait_readable(pidfd)   # ends when the manager ends
        finally:
            os.close(pidfd)
        self._sweep(manager_pid)

    def _sweep(self, manager_pid: int) -> None:
        """End and reap every process of this runtime re-parented to us
        (workers, then the domains they leave), unlink the manager's
        segments, remove the runtime's directory."""
        # The workers are told of the manager's death (PDEATHSIG, SIGTERM)
        # and end and reap their domains themselves: give them the time to,
        # then make sure. Once each is gone, whatever of its domains is left
        # has been re-parented to us and can be found.
        deadline = time.monotonic() + WORKER_CLEANUP_TIMEOUT
        for pid, pidfd in list(self._workers.items()):
            wait_readable(pidfd, max(0.0, deadline - time.monotonic()))
            try:            # by pidfd: never a reused pid
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_readable(pidfd, 10)
            os.close(pidfd)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass            # reaped by the manager before it went
        self._workers.clear()
        if self.cgroup is not None:
            # Everything any domain of ours forked, wherever it went: the
            # reaping of those re-parented to us follows, whatever this met.
            try:
                _containment.end_group(self.cgroup)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        groups: set[int] = set()     # domains' process groups we ended
        while time.monotonic() < deadline:
            ours = [p for p in children_of()
                    if p != manager_pid and (self._is_ours(p, manager_pid) or _pgid(p) in groups)]
            if not ours:
                break
            groups.update(ours)
            end_and_reap(ours)
        for path in glob.glob(f"/dev/shm/procmgr-{manager_pid}-*"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        # Its socket, logs and runtime log (the manager removes them itself
        # when it is not killed) -- if the directory is still the one our
        # manager had and nobody holds it: a start that was refused never
        # had one, and a runtime that took the name over since holds it.
        if self._dir_id is not None:
            remove_dead_runtime_dir(runtime_dir(self.name), self._dir_id)

    def _is_ours(self, pid: int, manager_pid: int) -> bool:
        """A domain of this runtime (its environment says so), or the
        workers' template or a worker of this runtime's manager (their
        command lines name the manager's pid: a name could be another
        runtime's argument)."""
        marker = f"PROCMGR_RUNTIME={self.name}".encode()
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    return True
        except PermissionError:
            pass        # non-dumpable (a worker, the template): its command line says
        except (FileNotFoundError, ProcessLookupError):
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        manager = str(manager_pid).encode()
        args = raw.split(b"\0")
        if args[1:4] == [b"-m", b"spawnd_workers", b"--template"] and \
                args[-3:-1] == [b"--manager-pid", manager]:
            return True
        # A worker, forked from the template, shows its command line as one
        # string, the manager's pid last (spawnd_workers/template.py).
        title = raw.rstrip(b"\0")
        return b" -m spawnd_workers --core " in title and \
            title.endswith(b" --parent-pid " + manager)

    def client(self) -> Client:
        """A new client binding (its own ring pair) in this process."""
        client = connect(self.name)
        self._clients.append(client)
        return client

    async def aclient(self):
        """A new asyncio client (procmgr/client/aio.py) of this runtime,
        bound to the running loop; closed with the runtime if not before."""
        from procmgr.client.aio import aconnect     # the asyncio side loads when used
        client = await aconnect(self.name)
        self._clients.append(client)
        return client

    def restart_core(self, core: int, timeout: float | None = START_TIMEOUT) -> None:
        """Start a new worker for ``core`` (after its worker died)."""
        self.monitor.add_spawnd(core, timeout=timeout)
        self._note_workers()

    def close(self) -> None:
        """Stop the runtime: every domain killed and reaped, nothing left."""
        for client in self._clients + ([self.monitor] if self.monitor else []):
            client.close()
        self._clients, self.monitor = [], None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._guard.join(timeout=15)
        self.proc = None
        _SUBREAPER.release()

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
