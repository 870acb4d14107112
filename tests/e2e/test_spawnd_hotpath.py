"""The spawnd worker's hot path in C (spawnd_workers/_spawnd.c), driven in
this process through real rings: it serves the spawns it knows, leaves the
rest in the ring in order, and reports real exits of real programs.
(tests/e2e/test_worker.py drives it inside a whole worker process.)"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from procmgr.protocol import Decoder, Flag, Msg, Op, SpawnArgs, encode, take
from ringbuf import Ring, unique_name
from spawnd_workers import _spawnd
from spawnd_workers._spawnd import RUN_CHILDREN, RUN_DECLINED, HotPath, Prepared

T = 10.0


@pytest.mark.parametrize("argv, env, error", [
    (["a\0b"], [], ValueError),           # NUL inside an argument
    (["a"], [b"K=\0"], ValueError),       # ... or an environment entry
    (["a"], 5, TypeError),
    ([3], [], TypeError),
])
def test_prepared_refuses_what_exec_cannot_take(argv, env, error):
    with pytest.raises(error):
        Prepared("/bin/true", argv, env, [])


class Bench:
    """The worker's side of a request/reply ring pair, and the manager's."""

    def __init__(self):
        self.requests = Ring.create(unique_name("procmgr-test"), 64)
        self.replies = Ring.create(unique_name("procmgr-test"), 64)
        self.epoll = select.epoll()
        self.child_r, self.child_w = os.pipe2(os.O_NONBLOCK)   # as ChildWatch's
        self.epoll.register(self.child_r, select.EPOLLIN)
        # The worker's doorbell: the manager's pushes ring it while the
        # worker sleeps armed on its request ring.
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK)
        self.epoll.register(self.doorbell, select.EPOLLIN | select.EPOLLET)
        self.requests.set_doorbell(self.doorbell)
        self.hot = HotPath(self.requests.handle_addr, self.replies.handle_addr,
                           self.epoll.fileno(), self.child_r, 3, "bench")
        self.decoder = Decoder()

    def prepare(self, argv: list[str], path: str | None = None) -> bytes:
        payload = SpawnArgs(path or argv[0], argv).encode()
        self.hot.prepared[payload] = Prepared(path or argv[0], argv, [b"PATH=/bin:/usr/bin"],
                                              [("open", 0, os.devnull, os.O_RDONLY, 0)])
        return payload

    def request(self, op, seq, dom, payload=b""):
        assert self.requests.try_push_all(encode(Msg(op, seq, 3, dom, 40 + dom,
                                                     payload=payload)))

    def replies_now(self) -> list[Msg]:
        return take(self.replies, self.decoder)

    def until_exit(self) -> Msg:
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            self.hot.run_once(0.1, False)
            if got := self.replies_now():
                return got[0]
        raise AssertionError("no exit reported")

    def close(self):
        for d in list(self.hot.dispatchers.values()):
            os.killpg(d.pid, signal.SIGKILL)
            status, _ = self.hot.reap(d.dom, False)
            assert os.WIFEXITED(status) or os.WTERMSIG(status) == signal.SIGKILL
        self.epoll.close()
        os.close(self.doorbell)
        os.close(self.child_r)
        os.close(self.child_w)
        for ring in (self.requests, self.replies):
            ring.close()
            ring.unlink()


@pytest.fixture
def bench():
    b = Bench()
    yield b
    b.close()


def test_a_prepared_spawn_is_served_and_its_exit_reported(bench):
    payload = bench.prepare(["sh", "-c", "exit 7"], path="/bin/sh")   # fits one slot
    bench.request(Op.SD_SPAWN, 1, dom=5, payload=payload)
    assert bench.hot.run_once(0, False) == 0             # served, nothing left for Python
    reply, *exited = bench.replies_now()    # (a quick exit may be reported in the same round)
    assert (reply.op, reply.seq, reply.dom, reply.nonce, reply.err) == (Op.SD_SPAWN, 1, 5, 45, 0)
    assert reply.flags == Flag.REPLY
    d = bench.hot.dispatchers.get(5)
    assert d is None or (d.pid, d.nonce, d.span) == (reply.status, 45, False)
    exit_ = exited[0] if exited else bench.until_exit()
    assert (exit_.op, exit_.dom, exit_.nonce, exit_.core, exit_.status) == (Op.SD_EXIT, 5, 45, 3, 7)
    assert exit_.flags == Flag.RELEASED                   # reaped: nothing held any more
    assert 5 not in bench.hot.dispatchers
    with pytest.raises(ChildProcessError):
        os.waitpid(reply.status, os.WNOHANG)              # reaped


def test_a_started_program_leads_a_group_of_its_own(bench):
    bench.request(Op.SD_SPAWN, 1, dom=4, payload=bench.prepare(["/bin/sleep", "30"]))
    bench.hot.run_once(0, False)
    (reply,) = bench.replies_now()
    d = bench.hot.dispatchers[4]
    assert (d.pid, d.nonce, d.span) == (reply.status, 44, False)
    assert os.getpgid(d.pid) == d.pid


def test_a_signal_death_is_reported_as_one(bench):
    payload = bench.prepare(["/bin/sleep", "30"])
    bench.request(Op.SD_SPAN, 1, dom=6, payload=payload)
    bench.hot.run_once(0, False)
    (reply,) = bench.replies_now()
    assert bench.hot.dispatchers[6].span
    os.kill(reply.status, signal.SIGTERM)
    exit_ = bench.until_exit()
    assert (exit_.status, exit_.flags) == (signal.SIGTERM, Flag.SIGNALED | Flag.RELEASED)


def test_what_it_does_not_serve_stays_in_the_ring_in_order(bench):
    known = bench.prepare(["/bin/true"])
    unknown = SpawnArgs("/bin/echo", ["/bin/echo"]).encode()
    bench.request(Op.SD_SPAWN, 1, dom=1, payload=known)
    bench.request(Op.SD_SPAWN, 2, dom=2, payload=unknown)   # not prepared
    bench.request(Op.SD_SPAWN, 3, dom=3, payload=known)
    assert bench.hot.run_once(0, False) == RUN_DECLINED
    assert [r.seq for r in bench.replies_now()] == [1]        # served up to the unknown one
    assert [m.seq for m in take(bench.requests, Decoder())] == [2, 3]   # left, in order


def test_a_payload_longer_than_a_slot_is_pythons(bench):
    payload = bench.prepare(["/bin/sh", "-c", "exit 7"])     # 33 bytes: one past inline
    bench.request(Op.SD_SPAWN, 1, dom=1, payload=payload)
    assert bench.hot.run_once(0, False) == RUN_DECLINED
    assert not bench.hot.dispatchers


def test_a_domain_already_here_and_a_kill_are_declined(bench):
    known = bench.prepare(["/bin/sleep", "30"])
    bench.request(Op.SD_SPAWN, 1, dom=1, payload=known)
    bench.request(Op.SD_SPAWN, 2, dom=1, payload=known)     # again: Python refuses it
    assert bench.hot.run_once(0, False) == RUN_DECLINED
    assert len(bench.replies_now()) == 1
    assert [m.seq for m in take(bench.requests, Decoder())] == [2]
    bench.request(Op.SD_KILL, 3, dom=1)
    assert bench.hot.run_once(0, False) == RUN_DECLINED


def test_a_failed_start_is_left_for_python_to_word(bench):
    payload = SpawnArgs("/no/such/program", ["/no/such/program"]).encode()
    bench.hot.prepared[payload] = Prepared("/no/such/program", ["x"], [], [])
    with pytest.raises(FileNotFoundError):
        bench.hot.start(bench.hot.prepared[payload], 9, 0, False)
    bench.request(Op.SD_SPAWN, 1, dom=9, payload=payload)
    assert bench.hot.run_once(0, False) == RUN_DECLINED
    assert bench.replies_now() == [] and not bench.hot.dispatchers


def test_a_python_partial_message_comes_first(bench):
    bench.request(Op.SD_SPAWN, 1, dom=1, payload=bench.prepare(["/bin/true"]))
    assert bench.hot.run_once(0, True) == RUN_DECLINED
    assert bench.replies_now() == []


def test_it_sleeps_until_the_timeout_when_nothing_comes(bench):
    start = time.monotonic()
    assert bench.hot.run_once(0.05, False) == 0
    assert 0.04 <= time.monotonic() - start < 2.0


def asleep_in_epoll(tid: int) -> bool:
    """The thread ``tid`` of this process sleeps in epoll_wait."""
    with open(f"/proc/self/task/{tid}/wchan") as f:
        return f.read() == "do_epoll_wait"


def test_it_serves_what_wakes_it_without_returning_until_a_wake_brings_nothing(bench):
    """A spawn that arrives while it sleeps is served in the same run_once
    (its exit reported too); a bare doorbell -- what the stop handler rings
    -- sends it back to Python at once, well before the timeout."""
    payload = bench.prepare(["/bin/true"])
    result, tid = [], []

    def run():
        tid.append(threading.get_native_id())
        result.append(bench.hot.run_once(T, False))

    loop = threading.Thread(target=run)
    loop.start()
    try:
        deadline = time.monotonic() + T
        while not (tid and asleep_in_epoll(tid[0])) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert asleep_in_epoll(tid[0]), "run_once never went to sleep"
        bench.request(Op.SD_SPAWN, 1, dom=5, payload=payload)
        got, deadline = [], time.monotonic() + T
        while len(got) < 2 and time.monotonic() < deadline:
            got += bench.replies_now()
            time.sleep(0.01)
        assert [m.op for m in got] == [Op.SD_SPAWN, Op.SD_EXIT]
        assert loop.is_alive(), "run_once went back to Python between the spawn and its exit"
        start = time.monotonic()
        os.eventfd_write(bench.doorbell, 1)
        loop.join(T)
        assert not loop.is_alive() and result == [0]
        assert time.monotonic() - start < T / 2
    finally:
        if loop.is_alive():
            os.eventfd_write(bench.doorbell, 1)
            loop.join(T)


def test_a_full_reply_ring_holds_the_spawn_back(bench):
    payload = bench.prepare(["/bin/sleep", "30"])
    while bench.replies.try_push_all(encode(Msg(Op.SD_REPLY, 0))):
        pass
    bench.request(Op.SD_SPAWN, 1, dom=1, payload=payload)
    assert bench.hot.run_once(0, False) == _spawnd.RUN_FULL
    assert not bench.hot.dispatchers                          # nothing started
    assert [m.seq for m in take(bench.requests, Decoder())] == [1]


def test_the_child_watch_asks_python_only_about_a_stray(bench):
    os.write(bench.child_w, b"\x11")               # a SIGCHLD, as the wakeup fd has it
    assert bench.hot.run_once(0, False) == 0        # nobody exited: nothing for Python
    stray = subprocess.Popen(["/bin/true"])          # a child that is no dispatcher
    os.waitid(os.P_PID, stray.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped
    os.write(bench.child_w, b"\x11")
    assert bench.hot.run_once(0, False) == RUN_CHILDREN
    assert stray.wait(timeout=T) == 0
    assert bench.hot.run_once(0, False) == 0        # drained: asked once


def _run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (the signal mask is per process)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_child_signals_is_readable_when_a_child_exits():
    """As a worker uses it: SIGCHLD blocked before anything starts a thread,
    then the signalfd reports a child's exit, with no handler involved."""
    done = _run_python("""
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        import os, select, struct
        from spawnd_workers._spawnd import child_signals
        fd = child_signals()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(0) == [], "readable before any child exited"
        pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
        assert poller.poll(5000), "no SIGCHLD through the signalfd"
        signo = struct.unpack_from("<I", os.read(fd, 128))[0]
        assert os.waitpid(pid, 0)[1] == 0
        print(signo)
    """)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == signal.SIGCHLD


def test_child_signals_refuses_when_a_thread_could_take_the_signal():
    done = _run_python("""
        import threading, time
        t = threading.Thread(target=time.sleep, args=(1,), daemon=True)
        t.start()                       # started before SIGCHLD was blocked
        from spawnd_workers._spawnd import child_signals
        child_signals()
    """)
    assert done.returncode != 0
    assert "does not block SIGCHLD" in done.stderr


def test_only_stdout_and_stderr_are_captured_once_each():
    """A spawn keeps one spare log file per captured stream: a capture of
    another descriptor, or of one twice, is refused before anything runs."""
    for actions, why in (([("log", 3, 0, 0)], "only descriptors 1 and 2 can be captured, not 3"),
                         ([("log", 1, 0, 0), ("log", 1, 0, 0)], "descriptor 1 is captured twice")):
        with pytest.raises(ValueError, match=why):
            Prepared("/bin/true", ["x"], [], actions)
    Prepared("/bin/true", ["x"], [], [("log", 1, 0, 0), ("log", 2, 0, 0)])
