"""A real spawnd worker process, driven through its rings by the test
playing the manager: real programs, real exit statuses, nothing left over."""

from __future__ import annotations

import errno
import os
import signal
import time

import psutil
import pytest

from procmgr.errors import Err
from procmgr.protocol import Decoder, Flag, Msg, Op, SpawnArgs, encode
from ringbuf import Ring, unique_name

from e2e_helpers import wait_until


class WorkerUnderTest:
    def __init__(self, children, core=0, kill_grace=0.2, extra=()):
        self.requests = Ring.create(unique_name("procmgr-test"), 256)
        self.replies = Ring.create(unique_name("procmgr-test"), 256)
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK)
        self.requests.set_doorbell(self.doorbell)
        self.proc = children.python(
            "-m", "spawnd_workers", "--core", str(core), "--requests", self.requests.name,
            "--replies", self.replies.name, "--doorbell-fd", str(self.doorbell),
            "--kill-grace", str(kill_grace), *extra, pass_fds=(self.doorbell,))
        self.decoder = Decoder()
        self.seq = 0

    def send(self, op, dom, payload=b"", nonce=7) -> int:
        self.seq += 1
        assert self.requests.try_push_all(encode(Msg(op, self.seq, 0, dom, nonce,
                                                     payload=payload)))
        return self.seq

    def receive(self, timeout=10.0) -> Msg:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.decoder.feed(self.replies.pop(max(0.0, deadline - time.monotonic())))
            if msg is not None:
                return msg

    def call(self, op, dom, payload=b"") -> Msg:
        seq = self.send(op, dom, payload)
        reply = self.receive()
        assert reply.seq == seq and reply.op == op and reply.flags & Flag.REPLY
        return reply

    def spawn(self, dom, argv, **kw) -> Msg:
        return self.call(Op.SD_SPAWN, dom, SpawnArgs(argv[0], argv, **kw).encode())

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        for ring in (self.requests, self.replies):
            ring.close()
            ring.unlink()
        os.close(self.doorbell)


@pytest.fixture
def worker(children):
    w = WorkerUnderTest(children)
    yield w
    w.close()


def ignores(pid: int, sig: int) -> bool:
    """``pid`` ignores ``sig`` (its SigIgn mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(line for line in f if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (sig - 1)))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_true_exits_zero_and_is_reaped(worker):
    reply = worker.spawn(1, ["/bin/true"])
    assert reply.err == Err.OK and reply.status > 0
    pid = reply.status
    exit_report = worker.receive()
    assert (exit_report.op, exit_report.dom, exit_report.status) == (Op.SD_EXIT, 1, 0)
    assert exit_report.nonce == 7 and not exit_report.flags & Flag.SIGNALED
    assert not psutil.pid_exists(pid), "the worker did not reap its child"


def test_exit_report_says_released_and_kill_reply_too(worker):
    worker.spawn(1, ["/bin/true"])
    assert worker.receive().flags & Flag.RELEASED
    worker.spawn(2, ["/bin/sleep", "60"])
    assert worker.call(Op.SD_KILL, 2).flags & Flag.RELEASED


def test_orphan_that_left_the_group_is_reaped_when_it_exits(worker, tmp_path):
    """A domain's child that escaped its process group (setsid) outlives it,
    is re-parented to the worker (a subreaper) and, when it exits, is
    reaped by it: no zombie. The domain's own exit is reaped first, so the
    SIGCHLD of the orphan is the one that finds a stray."""
    pidfile = tmp_path / "orphan.pid"
    worker.spawn(1, ["/bin/sh", "-c",
                     f'setsid /bin/sh -c "echo \\$\\$ > {pidfile}; sleep 0.3" & '
                     # gone from our group before we exit (and the group is killed)
                     f'while [ ! -s {pidfile} ]; do sleep 0.01; done; exit 0'])
    assert worker.receive().op == Op.SD_EXIT
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the orphan never started"
        time.sleep(0.01)
    orphan = int(pidfile.read_text())
    while psutil.pid_exists(orphan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not psutil.pid_exists(orphan), "the orphan was left a zombie or never ended"


def test_exit_code_and_signal_death_are_reported(worker):
    worker.spawn(1, ["/bin/sh", "-c", "exit 7"])
    assert worker.receive().status == 7
    worker.spawn(2, ["/bin/sh", "-c", "kill -SEGV $$"])
    report = worker.receive()
    assert report.status == signal.SIGSEGV and report.flags & Flag.SIGNALED


def test_kill_ends_the_whole_process_group(worker):
    # sh forks a grandchild (sleep) and waits; the kill must take both.
    reply = worker.spawn(3, ["/bin/sh", "-c", "sleep 60 & wait"])
    pid = reply.status
    deadline = time.monotonic() + 5
    while not psutil.Process(pid).children() and time.monotonic() < deadline:
        time.sleep(0.01)
    grandchildren = [c.pid for c in psutil.Process(pid).children()]
    assert grandchildren
    assert worker.call(Op.SD_KILL, 3).err == Err.OK
    assert gone(pid) and all(gone(g) for g in grandchildren)
    assert worker.call(Op.SD_KILL, 3).err == Err.NOT_FOUND
    assert worker.call(Op.SD_CLEANUP, 3).err == Err.OK


def test_kill_of_a_program_ignoring_sigterm(worker):
    reply = worker.spawn(4, ["/bin/sh", "-c", "trap '' TERM; sleep 60"])
    wait_until(lambda: ignores(reply.status, signal.SIGTERM), what="sh ignores SIGTERM")
    start = time.monotonic()
    stopping = worker.call(Op.SD_KILL, 4)
    # Answered at once -- it still runs, in its grace -- and its end
    # reported once the grace is over and SIGKILL ended it.
    assert (stopping.err, stopping.flags & Flag.STOPPING) == (Err.OK, Flag.STOPPING)
    assert time.monotonic() - start < 0.15
    ended = worker.receive()
    assert (ended.op, ended.dom) == (Op.SD_EXIT, 4)
    assert ended.flags & Flag.SIGNALED and ended.status == signal.SIGKILL
    assert ended.flags & Flag.RELEASED
    assert time.monotonic() - start >= 0.15   # waited the grace, then SIGKILL
    assert gone(reply.status)


def test_exec_failures_carry_the_errno(worker, tmp_path):
    reply = worker.spawn(5, ["/no/such/program"])
    assert reply.err == Err.EXEC_FAILED and reply.status == errno.ENOENT
    assert b"/no/such/program" in reply.payload
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    text.chmod(0o644)                                     # not executable
    reply = worker.spawn(6, [str(text)])
    assert reply.err == Err.EXEC_FAILED and reply.status == errno.EACCES


def test_argv_env_and_caps_are_exactly_what_was_given(worker, tmp_path):
    out = tmp_path / "out.txt"
    script = ('import os,sys; print(sys.argv[1:], sorted(k for k in os.environ '
              'if not k.startswith("LC_")), os.environ["PROCMGR_DOMAIN_ID"], '
              'os.readlink("/proc/self/fd/0"), '
              'sorted(int(f) for f in os.listdir("/proc/self/fd")))')
    import sys
    worker.spawn(7, [sys.executable, "-c", script, "a b", ""], env={"ONLY": "1"},
                 caps=[(1, "w", str(out))])
    assert worker.receive().status == 0
    text = out.read_text()
    assert "['a b', '']" in text
    assert "'ONLY'" in text and "PROCMGR_CORE" in text and "PATH" not in text
    # stdin /dev/null, stdout the cap, stderr the runtime's, and the one
    # listdir opened: nothing of the worker's own descriptors
    assert text.strip().endswith("/dev/null [0, 1, 2, 3]")


def test_span_runs_a_second_dispatcher_marked_as_such(worker, tmp_path):
    out = tmp_path / "span.txt"
    payload = SpawnArgs("/bin/sh", ["/bin/sh", "-c",
                                    'echo "$PROCMGR_DISPATCHER $PROCMGR_DOMAIN_ID"'],
                        None, [(1, "a", str(out))]).encode()
    assert worker.call(Op.SD_SPAN, 8, payload).err == Err.OK
    assert worker.receive().op == Op.SD_EXIT
    assert out.read_text().strip() == "1 8"


def test_worker_dies_with_its_parent(children):
    """PR_SET_PDEATHSIG: SIGKILL the process that started the worker and the
    worker dies too (its domains are then the runtime's to end, by pid)."""
    requests = Ring.create(unique_name("procmgr-test"), 16)
    replies = Ring.create(unique_name("procmgr-test"), 16)
    doorbell = os.eventfd(0)
    starter = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-m', 'spawnd_workers', '--core', '0', "
        f"'--requests', '{requests.name}', '--replies', '{replies.name}', "
        f"'--doorbell-fd', '{doorbell}'], pass_fds=({doorbell},)); "
        "print(p.pid, flush=True); p.wait()"
    )
    middle = children.python("-c", starter, pass_fds=(doorbell,))
    try:
        worker_pid = int(middle.stdout.readline())
        worker = psutil.Process(worker_pid)
        deadline = time.monotonic() + 10       # until it has attached its rings
        while requests.peer_pid != worker_pid and time.monotonic() < deadline:
            time.sleep(0.01)
        assert requests.peer_pid == worker_pid
        middle.kill()
        middle.wait(timeout=10)
        worker.wait(timeout=5)                 # raises TimeoutExpired if it lived on
        assert not psutil.pid_exists(worker_pid) or gone(worker_pid)
    finally:
        for ring in (requests, replies):
            ring.close()
            ring.unlink()
        os.close(doorbell)


def test_worker_and_its_domains_are_pinned_to_its_cpu(children, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    core = 3
    w = WorkerUnderTest(children, core=core)
    try:
        out = tmp_path / "cpus.txt"
        w.spawn(1, ["/bin/sh", "-c", "grep Cpus_allowed_list /proc/self/status"],
                caps=[(1, "w", str(out))])
        assert w.receive().status == 0
        expected = cpus[core % len(cpus)]
        assert os.sched_getaffinity(w.proc.pid) == {expected}
        assert out.read_text().split()[-1] == str(expected)
    finally:
        w.close()


def test_a_worker_given_a_logs_directory_captures_into_it(children, tmp_path):
    w = WorkerUnderTest(children, extra=("--logs-dir", str(tmp_path)))
    try:
        assert w.spawn(5, ["/bin/sh", "-c", "echo out; echo err >&2"]).err == Err.OK
        assert w.receive().op == Op.SD_EXIT
        assert (tmp_path / "0" / "5.stdout").read_bytes() == b"out\n"
        assert (tmp_path / "0" / "5.stderr").read_bytes() == b"err\n"
    finally:
        w.close()


def test_a_worker_that_cannot_keep_logs_still_serves_and_says_so(children, tmp_path):
    """No rotator to be had (here: its directory's name is taken by a file;
    in life, a user out of inotify instances): the core keeps no logs --
    a program's output goes to /dev/null rather than unbounded -- and every
    spawn is served."""
    (tmp_path / "0").write_bytes(b"")
    w = WorkerUnderTest(children, extra=("--logs-dir", str(tmp_path)))
    try:
        assert w.spawn(5, ["/bin/sh", "-c", "echo out; exit 3"]).err == Err.OK
        exited = w.receive()
        assert exited.op == Op.SD_EXIT and exited.status == 3
    finally:
        w.close()
    assert b"output is not captured on this core" in w.proc.stderr.read()
    assert (tmp_path / "0").read_bytes() == b""
