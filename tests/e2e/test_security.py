"""Security of a real runtime: who can reach it, who can do what to a
domain, and what a domain gets from it.

- segments and the runtime directory are owner-only; another user's
  process can neither reach a ring (they have no name; the manager's
  descriptors of them are not its to open) nor connect (and if it could
  reach the socket, its uid is refused);
- only the monitor binding adds a spawnd;
- a domain cap cannot be guessed from its id, and without it nothing is done;
- a domain inherits exactly the descriptors and environment it was given,
  plus the four documented PROCMGR_* variables -- nothing of the runtime's.

The other user is uid/gid 65534 (nobody), taken by a child process; the
suite runs as root for this, and the tests skip otherwise.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
import tempfile
import time

import pytest

import procmgr
from e2e_helpers import (  # noqa: F401 (pm, rt: fixtures)
    T, RawHandshake, manager_segments, pm, process_gone, ring_files, rt, wait_until,
)
from procmgr import Domain, Err, ProcMgmtError, State
from procmgr.osutil import runtime_dir

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")

# A child as nobody: reads "attach NAME", "open PATH" or "connect PATH" lines and prints
# what happened, so it can be started before a short window opens.
PROBE = f"""
import os, socket, sys
from ringbuf import Ring, RingError     # imported as root: the interpreter's files may be 0700
os.setgroups([])
os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
print(f"uid {{os.getuid()}}", flush=True)
for line in sys.stdin:
    what, arg = line.split()
    try:
        if what == "attach":
            Ring.attach(arg)
        elif what == "open":
            os.close(os.open(arg, os.O_RDWR))
        else:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(arg)
            s.sendall(b'{{"hello": 1, "token": ""}}\\n')
            msg, fds, _, _ = socket.recv_fds(s, 4096, 1)
            print("refused" if not msg and not fds else f"ACCEPTED {{msg!r}}", flush=True)
            continue
    except (ConnectionResetError, BrokenPipeError):   # hung up on us (before or after our hello)
        print("refused", flush=True)
    except (RingError, OSError) as e:
        print(f"{{type(e).__name__}}: {{e}}", flush=True)
    else:
        print("ALLOWED", flush=True)
"""


@pytest.fixture
def probe(children):
    p = children.python("-c", PROBE, stdin=-1, text=True)
    try:
        assert p.stdout.readline().strip() == f"uid {NOBODY}", p.stderr.read()
        yield p
    finally:
        p.stdin.close()


def ask(probe, line: str) -> str:
    probe.stdin.write(line + "\n")
    probe.stdin.flush()
    return probe.stdout.readline().strip()


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@as_root
def test_segments_and_directories_are_owner_only(rt, pm, probe):
    directory = runtime_dir(rt.name)
    sock = os.path.join(directory, "manager.sock")
    for path in (os.path.dirname(directory), directory):
        assert mode(path) == 0o700 and os.stat(path).st_uid == os.getuid(), path
    assert os.stat(sock).st_uid == os.getuid()
    assert ask(probe, f"connect {sock}").startswith("PermissionError")

    # The rings have no name at all -- not even during a handshake: they
    # come as descriptors of sealed memory files, which only the manager and
    # the client hold.
    hs = RawHandshake(rt.name)
    try:
        names = hs.names()
        assert manager_segments(rt.proc.pid) == []
        for fd in hs.ring_fds:
            st = os.fstat(fd)
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.getuid())
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        hs.attach(names)
    finally:
        hs.close()
    held = ring_files(rt.proc.pid)
    assert held, "the manager maps its rings"
    for fd in held:
        path = f"/proc/{rt.proc.pid}/fd/{fd}"
        assert ask(probe, f"open {path}").startswith("PermissionError"), path
    assert pm.wait(pm.spawn(["/bin/true"], timeout=T), timeout=T) == 0


@as_root
def test_another_uid_is_refused_even_where_it_can_reach_the_socket(monkeypatch, probe):
    """The directory's mode is the first wall; the peer's uid (SO_PEERCRED)
    the second. Opened up by hand, only the second stands -- and holds."""
    base = tempfile.mkdtemp(prefix="procmgr-test-sec-", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", base)
    runtime = procmgr.Runtime(cores=1, name=f"sec-{secrets.token_hex(3)}")
    opened: list[str] = []
    try:
        runtime.start()
        directory = runtime_dir(runtime.name)
        sock = os.path.join(directory, "manager.sock")
        opened = [base, os.path.dirname(directory), directory]
        for path in opened:
            os.chmod(path, 0o711)
        os.chmod(sock, 0o777)
        assert ask(probe, f"connect {sock}") == "refused"
        for path in opened:
            os.chmod(path, 0o700)
        pm = runtime.client()
        assert pm.wait(pm.spawn(["/bin/true"], timeout=T), timeout=T) == 0
        assert pm.stats(timeout=T)["clients"] == 2      # the monitor and pm only
    finally:
        for path in opened:
            os.chmod(path, 0o700)
        runtime.close()
        os.rmdir(os.path.join(base, f"procmgr-{os.getuid()}"))
        os.rmdir(base)


def test_only_the_monitor_adds_a_spawnd(rt, pm):
    guesser = procmgr.connect(rt.name, _token=secrets.token_hex(16))
    try:
        for client in (pm, guesser):
            for args in ((2,), (2, "/procmgr-test-x", "/procmgr-test-y"), (0,)):
                with pytest.raises(ProcMgmtError) as info:
                    client.add_spawnd(*args, timeout=T)
                assert info.value.code == Err.NOT_MONITOR
    finally:
        guesser.close()
    with pytest.raises(ProcMgmtError) as info:
        pm.spawn(["/bin/true"], core=2, timeout=T)
    assert info.value.code == Err.INVALID_SPAWND
    assert sorted(pm.stats(timeout=T)["cores"]) == ["0", "1"]
    rt.monitor.add_spawnd(2, timeout=T)                     # the monitor can
    assert pm.wait(pm.spawn(["/bin/sh", "-c", "exit 5"], core=2, timeout=T), timeout=T) == 5


def test_the_monitor_token_is_not_readable_by_other_processes(rt):
    with open(f"/proc/{rt.proc.pid}/environ", "rb") as f:
        assert b"PROCMGR_MONITOR_TOKEN" not in f.read()


def test_a_cap_cannot_be_guessed(rt, pm, children):
    doms = [pm.spawn(["/bin/sleep", "30"], core=i % 2, timeout=T) for i in range(8)]
    nonces = [d.nonce for d in doms]
    assert len(set(nonces)) == len(nonces)
    assert all(n >> 32 for n in nonces), "a 64-bit nonce with its upper half zero"
    assert len({b - a for a, b in zip(nonces, nonces[1:])}) == len(nonces) - 1
    # What anyone may ask about a domain by id does not hand out its nonce.
    fut = pm.request(procmgr.protocol.Msg(procmgr.protocol.Op.GET_STATUS, dom=doms[0].id))
    assert pm.wait_for(fut, timeout=T).nonce == 0

    # Another process knows the ids (they are small and in order) but no cap.
    code = ("import random, sys, procmgr\n"
            "pm = procmgr.connect(sys.argv[1])\n"
            "codes = set()\n"
            "for ident in map(int, sys.argv[2:]):\n"
            "    for guess in [0, 1, ident, 2**64 - 1] + [random.getrandbits(64) for _ in range(25)]:\n"
            "        d = procmgr.Domain(ident, guess)\n"
            "        for call in (lambda: pm.kill(d, timeout=10), lambda: pm.span(d, 1, timeout=10),\n"
            "                     lambda: pm.exit(d, 0, timeout=10)):\n"
            "            try:\n"
            "                call()\n"
            "                codes.add('ACTED')\n"
            "            except procmgr.ProcMgmtError as e:\n"
            "                codes.add(e.code.name)\n"
            "print(*sorted(codes))\n")
    p = children.python("-c", code, rt.name, *[str(d.id) for d in doms])
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()
    assert out.split() == [b"BAD_CAP"]
    for d in doms:
        info = pm.status(d, timeout=T)
        assert (info.state, info.cores) == (State.RUNNING, [d.core]) and not process_gone(d.pid)
    for d in doms:
        pm.kill(d, timeout=T)


def _fds(pid: int, expected: list[int]) -> dict[int, str]:
    """The program's descriptors, from the first look that finds exactly
    ``expected``. The dynamic loader opens and closes a few of its own just
    after exec, so a look can catch one of those, or lose the race with its
    close (then it sees nothing); the look that matched is the one returned,
    never a second one that could land in the middle of the loader's work."""
    seen: dict[int, str] = {}

    def matches() -> bool:
        seen.clear()
        try:
            seen.update({int(fd): os.readlink(f"/proc/{pid}/fd/{fd}")
                         for fd in os.listdir(f"/proc/{pid}/fd")})
        except FileNotFoundError:
            pass
        return sorted(seen) == expected
    try:
        wait_until(matches, timeout=T)
    except AssertionError:
        raise AssertionError(f"descriptors {seen}, expected only {expected}") from None
    return dict(seen)


def _environ(pid: int) -> dict[str, str]:
    """The environment the program runs with. A spawn is answered as soon
    as posix_spawn returns -- the exec is past its point of no return, but
    /proc may show the new environment a moment later, empty until then
    (it is never empty here: the worker adds the documented four)."""
    deadline = time.monotonic() + T
    while True:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
        if data or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    return dict(e.split("=", 1) for e in data.decode().split("\0")[:-1])


def _signals(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        # Signals 1-31 only: glibc reserves the first real-time ones for itself.
        return {k: int(v, 16) & 0x7FFF_FFFF for k, v in (line.split(":\t") for line in f)
                if k in ("SigBlk", "SigIgn")}


def _documented(d: Domain, rt, core: int, dispatcher: int) -> dict[str, str]:
    return {"PROCMGR_DOMAIN_ID": str(d.id), "PROCMGR_CORE": str(core),
            "PROCMGR_DISPATCHER": str(dispatcher), "PROCMGR_RUNTIME": rt.name}


def test_a_domain_inherits_exactly_what_it_was_given(rt, pm, tmp_path):
    out, src = tmp_path / "out", tmp_path / "in"
    src.write_text("x")
    env = {"ONLY": "1", "EMPTY": ""}
    d = pm.spawn_with_caps(["/bin/sleep", "30"], caps=[(1, "w", str(out)), (5, "r", str(src))],
                           env=env, core=1, timeout=T)
    fds = _fds(d.pid, [0, 1, 2, 5])
    assert (fds[0], fds[1], fds[5]) == ("/dev/null", str(out), str(src))
    assert not any(t.startswith(("socket:", "anon_inode:", "/dev/shm")) for t in fds.values())
    assert _environ(d.pid) == env | _documented(d, rt, 1, 0)
    assert _signals(d.pid) == {"SigBlk": 0, "SigIgn": 0}
    assert os.getpgid(d.pid) == d.pid                      # its own process group

    # A span starts the same program with the same gifts, marked as a span.
    pid = pm.span(d, 0, timeout=T)
    _fds(pid, [0, 1, 2, 5])
    assert _environ(pid) == env | _documented(d, rt, 0, 1)
    pm.kill(d, timeout=T)

    # env None: the worker's environment -- ours, as the Runtime passed it on,
    # without the monitor token -- plus the documented four.
    d = pm.spawn(["/bin/sleep", "30"], timeout=T)
    seen, ours = _environ(d.pid), dict(os.environ)
    assert "PROCMGR_MONITOR_TOKEN" not in seen
    for env_of in (seen, ours):     # pytest's own marker changed since the runtime started
        env_of.pop("PYTEST_CURRENT_TEST", None)
    assert seen == ours | _documented(d, rt, 0, 0)
    _fds(d.pid, [0, 1, 2])
    pm.kill(d, timeout=T)
    wait_until(lambda: process_gone(d.pid), what="the domain is gone")


@as_root
def test_a_process_of_the_same_user_cannot_reach_the_managers_descriptors():
    """The manager and the workers make themselves non-dumpable
    (osutil.refuse_ptrace): another process of their own user can no
    longer open /proc/PID/fd of them -- through which it could read every
    domain's cap from a ring's slots, or write a forged exit into a
    worker's replies ring. Shown with two processes of one user (nobody):
    one that called it and one that did not, and a third of the same user
    trying both."""
    from procmgr.osutil import refuse_ptrace

    def become_nobody() -> None:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)

    def as_nobody_sleeping(refuse: bool) -> tuple[int, int]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                become_nobody()
                import ctypes
                ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)    # dumpable again after setuid
                if refuse:
                    refuse_ptrace()
                os.write(w, b"x")
                time.sleep(30)
            finally:
                os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"x"
        os.close(r)
        return pid, r

    def opened_as_nobody(path: str) -> bool:
        pid = os.fork()
        if pid == 0:
            try:
                become_nobody()
                os.listdir(path)
                os._exit(0)
            except PermissionError:
                os._exit(13)
            finally:
                os._exit(1)
        return os.waitpid(pid, 0)[1] == 0

    sleepers = []
    try:
        sleepers.append(as_nobody_sleeping(True)[0])
        sleepers.append(as_nobody_sleeping(False)[0])
        refused, plain = sleepers
        assert not opened_as_nobody(f"/proc/{refused}/fd")
        assert opened_as_nobody(f"/proc/{plain}/fd")          # the same user, not refused
    finally:
        for pid in sleepers:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
