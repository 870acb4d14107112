"""What the end-to-end tests share: a bound on every answer, the ``rt`` and
``pm`` fixtures (a real runtime -- manager process, two workers -- that
leaves nothing behind, and a client of it; a test module imports them),
process checks, and a client handshake done by hand, so a test can stop
half-way through it or do with the rings what a well-behaved client would
not."""

from __future__ import annotations

import json
import os
import select
import socket
import time

import psutil
import pytest

import procmgr
from procmgr.osutil import runtime_dir
from ringbuf import Ring

T = 10.0      # bound on every answer


@pytest.fixture
def rt():
    runtime = procmgr.Runtime(cores=2, name=f"procmgr-test-{os.getpid()}-{time.monotonic_ns()}")
    runtime.start()
    try:
        yield runtime
    finally:
        manager_pid = runtime.proc.pid
        try:
            worker_pids = [p.pid for p in psutil.Process(manager_pid).children()]
        except psutil.NoSuchProcess:
            worker_pids = []
        runtime.close()
        # nothing outlives the runtime, not even after a crash of its manager
        for pid in [manager_pid] + worker_pids:
            assert process_gone(pid), pid
        assert not os.path.exists(runtime_dir(runtime.name))
        assert manager_segments(manager_pid) == []
        assert runtime.cgroup is None or not os.path.exists(runtime.cgroup)


@pytest.fixture
def pm(rt):
    return rt.client()


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout: float = T, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout} s")
        time.sleep(0.01)


def settled_fds(pid: int, no_pidfd: bool = False) -> set[int]:
    """The descriptors ``pid`` holds once two looks 50 ms apart agree (and,
    with ``no_pidfd``, it holds no pidfd: a worker closes a program's just
    after reporting its exit): a descriptor closed after the look would
    leave room under a limit set from it."""
    def look() -> dict[int, str]:
        fds = {}
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                fds[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                fds[int(fd)] = "closed meanwhile"
        return fds

    seen = {}

    def settled() -> bool:
        nonlocal seen
        before, seen = seen, look()
        time.sleep(0.05)
        return seen == before == look() and not (
            no_pidfd and "anon_inode:[pidfd]" in seen.values())

    wait_until(settled, what=f"process {pid}'s descriptors to settle")
    return set(seen)


def at_its_limit(process: psutil.Process, no_pidfd: bool = False) -> None:
    """``process`` left without a descriptor to spare: a new one takes the
    lowest free number, and the soft limit bounds the number -- set there
    (once its descriptors have settled: settled_fds)."""
    used = settled_fds(process.pid, no_pidfd)
    lowest_free = next(n for n in range(len(used) + 1) if n not in used)
    process.rlimit(psutil.RLIMIT_NOFILE, (lowest_free, process.rlimit(psutil.RLIMIT_NOFILE)[1]))


def line_of(proc, timeout: float = T) -> bytes:
    """The next line ``proc`` prints, waited for at most ``timeout``: past
    it the process is killed (a child that never answers would otherwise
    hang the test in readline) and what it said on stderr is raised."""
    poller = select.poll()
    poller.register(proc.stdout, select.POLLIN)
    if not poller.poll(timeout * 1000):
        raise AssertionError(f"no line from {proc.args[:3]} within {timeout} s: "
                             f"{stderr_of(proc)!r}")
    return proc.stdout.readline()


def stderr_of(proc) -> bytes:
    """What ``proc`` wrote on stderr, once it is ended (killed if need be):
    reading it while it runs would wait for it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=T)
    return proc.stderr.read()[-2000:] if proc.stderr else b""


def manager_segments(manager_pid: int) -> list[str]:
    """Names of the manager's in /dev/shm: none, ever (its rings are sealed
    memory files, with no name), but a test says so."""
    return [e for e in os.listdir("/dev/shm") if e.startswith(f"procmgr-{manager_pid}-")]


# Reading /proc/PID/fd of the manager or a worker, which are non-dumpable
# (osutil.refuse_ptrace): only root may.
as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="reads /proc/PID/fd of the runtime's processes: root only")


def ring_files(pid: int, label: str = "") -> list[int]:
    """The descriptors process ``pid`` holds of rings' memory files (whose
    label starts with ``label``): a mapping holds one each."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"/memfd:ringbuf-{label}"):
                out.append(int(fd))
        except OSError:
            pass                # closed meanwhile
    return out


def workers_of(manager_pid: int) -> dict[int, psutil.Process]:
    """The manager's spawnd workers, by core. Its other child is the
    workers' template (procmgr/manager/workers.py), which has no core."""
    found = {}
    for p in psutil.Process(manager_pid).children():
        try:
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--core" in cmd:
            found[int(cmd[cmd.index("--core") + 1])] = p
    return found


def ring_inodes(pid: int) -> set[int]:
    """The memory files of rings that process ``pid`` holds, by inode: a
    ring handed to a peer is the same file on both sides, so a test can ask
    about one ring without counting everybody else's (which come and go as
    other clients leave)."""
    held = set()
    for fd in ring_files(pid):
        try:
            held.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:
            pass                # closed meanwhile
    return held


class RawHandshake:
    """The client side of the manager's socket handshake, step by step.

    The manager serves the handshake synchronously with a 2 s bound
    (server.HANDSHAKE_TIMEOUT): what a test does between ``hello`` and
    ``attached`` must be quick, or the manager gives the client up.
    """

    def __init__(self, name: str, hello: bytes = b'{"hello": 1, "token": ""}\n'):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(T)
        self.sock.connect(os.path.join(runtime_dir(name), "manager.sock"))
        self.sock.sendall(hello)
        self.doorbell = -1
        self.ring_fds: list[int] = []
        self.rings: list[Ring] = []

    def names(self) -> dict:
        """The manager's answer: the labels of the client's two rings, which
        come as descriptors after its doorbell (kept in ``ring_fds``)."""
        msg, fds, _, _ = socket.recv_fds(self.sock, 4096, 3)
        assert msg and len(fds) == 3, "the manager refused the handshake"
        self.doorbell, *self.ring_fds = fds
        return json.loads(msg)

    def attach(self, names: dict) -> tuple[Ring, Ring]:
        """Map both rings (in the roles given) and say so; (requests, responses)."""
        fds, self.ring_fds = self.ring_fds, []
        requests = Ring.attach_fd(fds[0], names["requests"])
        responses = Ring.attach_fd(fds[1], names["responses"])
        self.rings += [requests, responses]
        for ring in self.rings:
            ring.set_doorbell(self.doorbell)
        self.sock.sendall(b'{"attached": 1}\n')
        return requests, responses

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        for fd in self.ring_fds:
            os.close(fd)
        self.ring_fds = []
        if self.doorbell >= 0:
            os.close(self.doorbell)
            self.doorbell = -1
        self.sock.close()
