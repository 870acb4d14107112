"""Cross-process stress tests of ringbuf: real OS processes on both ends.

What is checked is correctness, never speed: every message arrives exactly
once and in order (sequence numbers), a blocked side is woken by its peer's
progress, its close, its death or a signal, a blocked side burns no CPU, and
no segment outlives the processes. The only timings asserted are generous
bounds on wake-ups ("within 1 s"), on a machine that may be busy.

The far ends are ``python -m ringbuf.stream`` (streams) and
``tests/stress/ring_peer.py`` (everything else). Every wait here is bounded:
children by ``communicate``/``wait`` timeouts and ``--timeout``; a wait in
this process that is meant to block forever (``timeout=None``) runs under
``watchdog``, which interrupts it with a signal if it has not ended in time.

"The peer is asleep" is read off the shared header: a waiter sets its sleep
word (``cons_sleep``/``prod_sleep``) before FUTEX_WAIT, so a set word means
the spin phase is over. A test that needs the peer really inside FUTEX_WAIT
gives it another ``SETTLE`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import random
import signal
import struct
import threading
import time
from pathlib import Path

import numpy as np
import posix_ipc
import psutil
import pytest

from ringbuf import HEADER_DTYPE, HEADER_SIZE, Closed, Empty, PeerDied, Ring
from ringbuf import stream

SEQ = struct.Struct("<Q")
PEER = str(Path(__file__).with_name("ring_peer.py"))
# Longest a child or a bounded wait may take before the test gives up; far
# above what any step needs, so it only ever fires on a real hang.
LIMIT = 20.0
# The wake-up bound of the contract checks (slices are 10 ms; 1 s is slack
# for a busy 2-CPU machine).
WAKE = 1.0
# Time for a waiter whose sleep word is set to get into FUTEX_WAIT.
SETTLE = 0.1


# ---- helpers --------------------------------------------------------------


def report(proc, timeout: float = LIMIT) -> dict:
    """The JSON line a child printed; it must have exited 0."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child exited {proc.returncode}: {err.decode()}"
    return json.loads(out.decode().splitlines()[-1])


def wait_until(pred, what: str, timeout: float = LIMIT, poll: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(poll)


def shm_path(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


class SegmentView:
    """A read-only look at the header of a ring another process made. It does
    not attach (attaching would make this process the attacher)."""

    def __init__(self, name: str, timeout: float = LIMIT):
        deadline = time.monotonic() + timeout
        while True:
            try:
                shm = posix_ipc.SharedMemory(name, read_only=True)
            except posix_ipc.ExistentialError:
                shm = None
            if shm is not None:
                try:
                    # The creator sizes the segment right after making it.
                    if shm.size >= HEADER_SIZE:
                        self._mm = mmap.mmap(shm.fd, HEADER_SIZE, prot=mmap.PROT_READ)
                        break
                finally:
                    shm.close_fd()
            if time.monotonic() > deadline:
                raise AssertionError(f"segment {name} never appeared")
            time.sleep(0.001)

    def header(self) -> np.void:
        return np.frombuffer(self._mm, HEADER_DTYPE, count=1)[0].copy()

    def close(self) -> None:
        self._mm.close()

    def __enter__(self) -> SegmentView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach_when_created(name: str) -> Ring:
    """Attach to a ring a child is creating (its magic is written last)."""
    with SegmentView(name) as view:
        wait_until(lambda: view.header()["magic"] != 0, f"{name} is initialised")
    return Ring.attach(name)


def asleep(ring_or_view, word: str) -> bool:
    return bool(ring_or_view.header()[word])


class Hung(Exception):
    """A wait in this process that must have ended did not."""


@contextlib.contextmanager
def watchdog(seconds: float = LIMIT):
    """Bound a blocking call in the main thread: after ``seconds`` it gets a
    SIGUSR1 (its futex wait returns EINTR, Python runs the handler), and the
    handler raises Hung."""
    main = threading.main_thread().ident
    armed = True

    def on_usr1(signum, frame):
        if armed:
            raise Hung(f"blocking call still running after {seconds} s")

    old = signal.signal(signal.SIGUSR1, on_usr1)
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        armed = False
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGUSR1, old)


class KillWhen(threading.Thread):
    """SIGKILL ``pid`` (without reaping it) once ``pred()`` holds, from a
    thread, while the main thread is blocked; ``t_kill`` is when."""

    def __init__(self, pid: int, pred, settle: float = SETTLE):
        super().__init__(daemon=True)
        self.pid, self.pred, self.settle = pid, pred, settle
        self.t_kill: float | None = None
        self.failure: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + LIMIT
        while not self.pred():
            if time.monotonic() > deadline:
                self.failure = "the condition to kill never held"
                return
            time.sleep(0.001)
        time.sleep(self.settle)
        self.t_kill = time.monotonic()
        os.kill(self.pid, signal.SIGKILL)

    def result(self) -> float:
        self.join(LIMIT)
        assert self.failure is None, self.failure
        assert self.t_kill is not None
        return self.t_kill


def assert_zombie(pid: int) -> None:
    """The killed child has exited but nobody has reaped it yet: the case a
    kill(pid, 0) liveness check would get wrong."""
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
               f"{pid} is a zombie")


def fill(ring: Ring) -> int:
    """Push sequence numbers until the ring is full; return how many."""
    n = 0
    while ring.try_push(SEQ.pack(n)):
        n += 1
    assert n == ring.capacity
    return n


def peer(children, mode: str, name: str, *opts: str):
    return children.python(PEER, mode, name, *opts)


# ---- 1. streams: no loss, duplicate or reorder ---------------------------


def _stream(children, shm_name, direction, capacity, count, prod_batch, cons_batch,
            start_index=0):
    """Stream ``count`` sequence numbers between this process and a
    ``ringbuf.stream`` child; ``direction`` "p2c": this process produces."""
    with Ring.create(shm_name, capacity, _start_index=start_index) as ring:
        if direction == "p2c":
            child = children.python("-m", "ringbuf.stream", "consume", shm_name,
                                    str(count), "--batch", str(cons_batch),
                                    "--timeout", "10")
            stream.produce(ring, count, prod_batch, timeout=10)
        else:
            child = children.python("-m", "ringbuf.stream", "produce", shm_name,
                                    str(count), "--batch", str(prod_batch),
                                    "--timeout", "10")
            errors = stream.consume(ring, count, cons_batch, timeout=10)
            assert errors == []
        result = report(child, timeout=60)
        assert len(ring) == 0, "more messages than were sent"
    assert result["count"] == count
    assert result["errors"] == []


@pytest.mark.parametrize("direction", ["p2c", "c2p"])
@pytest.mark.parametrize("capacity, count", [(1024, 200_000), (8, 50_000), (2, 50_000)])
def test_stream_single_messages(children, shm_name, direction, capacity, count):
    """Messages one at a time. Capacities 8 and 2 make the ring go full and
    empty all the time, so both sides keep sleeping and waking; they get
    fewer messages because on a busy machine each transition can cost a
    context switch."""
    _stream(children, shm_name, direction, capacity, count, 0, 0)


@pytest.mark.parametrize("direction, capacity, count, prod_batch, cons_batch", [
    ("p2c", 1024, 2_000_000, 1000, 1000),
    ("c2p", 1024, 2_000_000, 1000, 1000),
    # Batches that do not divide the capacity, so they straddle the wrap.
    ("p2c", 1024, 2_000_000, 300, 700),
    ("c2p", 1024, 2_000_000, 700, 300),
    # Batches larger than the ring: push_many/pop_many_into do what fits.
    ("p2c", 256, 500_000, 5000, 3000),
    # Small rings: constant full/empty transitions under batches.
    ("p2c", 8, 50_000, 3, 5),
    ("c2p", 8, 50_000, 5, 3),
    ("p2c", 2, 30_000, 3, 1),
    ("c2p", 2, 30_000, 1, 3),
    # A batch producer against a single-message consumer and the reverse.
    ("p2c", 64, 100_000, 50, 0),
    ("c2p", 64, 100_000, 0, 50),
])
def test_stream_batches(children, shm_name, direction, capacity, count,
                        prod_batch, cons_batch):
    _stream(children, shm_name, direction, capacity, count, prod_batch, cons_batch)


@pytest.mark.parametrize("direction, prod_batch, cons_batch",
                         [("p2c", 0, 0), ("c2p", 7, 5)])
def test_stream_across_counter_wrap(children, shm_name, direction, prod_batch,
                                    cons_batch):
    """The free-running counters cross 2**64 half-way through the stream."""
    _stream(children, shm_name, direction, 8, 40_000, prod_batch, cons_batch,
            start_index=2**64 - 20_000)


# ---- 2. ping-pong ---------------------------------------------------------


def test_ping_pong(children, shm_name):
    """Thousands of round trips over a ring pair: each side is empty-blocked
    every turn, so this is the wake path, again and again, both ways."""
    n = 3000
    with Ring.create(shm_name, 2) as req, Ring.create(shm_name + "-back", 2) as back:
        child = peer(children, "pong", shm_name, "--count", str(n), "--timeout", "10")
        for seq in range(n):
            req.push(SEQ.pack(seq), timeout=10)
            assert back.pop(timeout=10) == SEQ.pack(seq) + b"pong"
        assert report(child) == {"count": n, "errors": []}
        assert len(req) == 0 and len(back) == 0


# ---- 3. blocking and waking -----------------------------------------------


def test_blocked_pop_is_woken_by_push(children, shm_name):
    with Ring.create(shm_name, 8) as req, Ring.create(shm_name + "-back", 8) as back:
        child = peer(children, "pong", shm_name, "--count", "1")
        wait_until(lambda: asleep(req, "cons_sleep"), "the child sleeps in pop")
        time.sleep(SETTLE)
        start = time.monotonic()
        req.push(SEQ.pack(0))
        assert back.pop(timeout=LIMIT) == SEQ.pack(0) + b"pong"
        elapsed = time.monotonic() - start
        assert report(child) == {"count": 1, "errors": []}
    assert elapsed < WAKE, f"reply took {elapsed:.3f} s"


def test_blocked_push_is_woken_by_pop(children, shm_name):
    with Ring.create(shm_name, 2) as ring:
        child = peer(children, "produce", shm_name, "--count", "3")
        wait_until(lambda: len(ring) == 2 and asleep(ring, "prod_sleep"),
                   "the child sleeps in push on a full ring")
        time.sleep(SETTLE)
        start = time.monotonic()
        assert ring.pop(timeout=0) == SEQ.pack(0)
        result = report(child)
        assert result["sent"] == 3 and result["error"] is None
        assert result["t_done"] - start < WAKE, "the producer was not woken"
        assert [ring.pop(timeout=0) for _ in range(2)] == [SEQ.pack(1), SEQ.pack(2)]


# ---- 4. a blocked side burns no CPU ---------------------------------------


@pytest.mark.parametrize("side", ["pop on empty", "push on full"])
def test_blocked_side_uses_little_cpu(children, shm_name, side):
    with Ring.create(shm_name, 8) as ring:
        if side == "pop on empty":
            child = peer(children, "consume", shm_name, "--max", "1")
            word = "cons_sleep"
        else:
            child = peer(children, "produce", shm_name, "--count", "9")
            word = "prod_sleep"
        wait_until(lambda: asleep(ring, word), "the child is asleep")
        time.sleep(SETTLE)
        proc = psutil.Process(child.pid)
        before, t0 = proc.cpu_times(), time.monotonic()
        time.sleep(1.0)
        after, t1 = proc.cpu_times(), time.monotonic()
        assert asleep(ring, word), "the child stopped waiting"
        used = (after.user + after.system) - (before.user + before.system)
        assert used < 0.05 * (t1 - t0), f"{used:.3f} CPU s in {t1 - t0:.2f} s"
        # Let it finish.
        if side == "pop on empty":
            ring.push(SEQ.pack(0))
            assert report(child)["got"] == 1
        else:
            assert ring.pop(timeout=0) == SEQ.pack(0)
            assert report(child)["sent"] == 9


# ---- 5. peer death --------------------------------------------------------


def test_consumer_here_sees_producer_death(children, shm_name):
    """This process blocked in pop(timeout=None); the producer is SIGKILLed
    and stays an unreaped zombie. The pidfd check must call that dead."""
    with Ring.create(shm_name, 8) as ring:
        child = peer(children, "produce", shm_name, "--count", "3", "--then", "sleep")
        wait_until(lambda: len(ring) == 3, "the child pushed 3")
        for seq in range(3):
            assert ring.pop(timeout=LIMIT) == SEQ.pack(seq)
        killer = KillWhen(child.pid, lambda: asleep(ring, "cons_sleep"))
        killer.start()
        with watchdog(), pytest.raises(PeerDied):
            ring.pop(timeout=None)
        detected = time.monotonic()
        t_kill = killer.result()
        assert detected - t_kill < WAKE
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        assert not ring.peer_alive()


def test_messages_before_producer_death_are_delivered(children, shm_name):
    with Ring.create(shm_name, 8) as ring:
        child = peer(children, "produce", shm_name, "--count", "5", "--then", "sleep")
        wait_until(lambda: len(ring) == 5, "the child pushed 5")
        os.kill(child.pid, signal.SIGKILL)
        assert_zombie(child.pid)
        with watchdog():
            for seq in range(5):
                assert ring.pop(timeout=None) == SEQ.pack(seq)
            with pytest.raises(PeerDied):
                ring.pop(timeout=None)


def test_consumer_child_sees_creator_producer_death(children, shm_name):
    """Both ends are children; the creator (the producer) dies, so the
    attacher's liveness check follows creator_pid."""
    producer = peer(children, "produce", shm_name, "--create", "8", "--count", "4",
                    "--then", "sleep")
    with SegmentView(shm_name) as view:
        wait_until(lambda: view.header()["prod_tail"] == 4, "the producer pushed 4")
        consumer = peer(children, "consume", shm_name)
        wait_until(lambda: view.header()["cons_head"] == 4
                   and asleep(view, "cons_sleep"), "the consumer sleeps on empty")
        time.sleep(SETTLE)
        t_kill = time.monotonic()
        os.kill(producer.pid, signal.SIGKILL)
        result = report(consumer)
    assert psutil.Process(producer.pid).status() == psutil.STATUS_ZOMBIE
    assert result["got"] == 4 and result["errors"] == []
    assert result["error"] == "PeerDied"
    assert result["t_error"] - t_kill < WAKE


def test_consumer_attaching_after_producer_death(children, shm_name):
    """The creator pushed, died (still a zombie), and only then does a
    consumer attach: it gets the backlog, then PeerDied."""
    producer = peer(children, "produce", shm_name, "--create", "8", "--count", "6",
                    "--then", "sleep")
    with SegmentView(shm_name) as view:
        wait_until(lambda: view.header()["prod_tail"] == 6, "the producer pushed 6")
    os.kill(producer.pid, signal.SIGKILL)
    assert_zombie(producer.pid)
    result = report(peer(children, "consume", shm_name))
    assert result["got"] == 6 and result["errors"] == []
    assert result["error"] == "PeerDied"


def test_producer_here_sees_consumer_death(children, shm_name):
    """This process blocked in push on a full ring; the consumer dies."""
    with Ring.create(shm_name, 8) as ring:
        child = peer(children, "hang", shm_name)
        wait_until(lambda: ring.peer_pid == child.pid, "the child attached")
        fill(ring)
        killer = KillWhen(child.pid, lambda: asleep(ring, "prod_sleep"))
        killer.start()
        with watchdog(), pytest.raises(PeerDied):
            ring.push(SEQ.pack(8), timeout=None)
        detected = time.monotonic()
        assert detected - killer.result() < WAKE
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE


def test_producer_child_sees_creator_consumer_death(children, shm_name):
    consumer = peer(children, "hang", shm_name, "--create", "8")
    with SegmentView(shm_name) as view:
        wait_until(lambda: view.header()["magic"] != 0, "the ring exists")
        producer = peer(children, "produce", shm_name)
        wait_until(lambda: view.header()["prod_tail"] == 8
                   and asleep(view, "prod_sleep"), "the producer sleeps on full")
        time.sleep(SETTLE)
        t_kill = time.monotonic()
        os.kill(consumer.pid, signal.SIGKILL)
        result = report(producer)
    assert psutil.Process(consumer.pid).status() == psutil.STATUS_ZOMBIE
    assert result["sent"] == 8 and result["error"] == "PeerDied"
    assert result["t_error"] - t_kill < WAKE


# ---- 6. close from either side --------------------------------------------


def test_creator_close_wakes_attacher_in_pop(children, shm_name):
    ring = Ring.create(shm_name, 8)
    try:
        child = peer(children, "consume", shm_name)
        wait_until(lambda: asleep(ring, "cons_sleep"), "the child sleeps in pop")
        time.sleep(SETTLE)
        t_close = time.monotonic()
        ring.close()
        result = report(child)
    finally:
        ring.close()
        ring.unlink()
    assert result["got"] == 0 and result["error"] == "Closed"
    assert result["t_error"] - t_close < WAKE
    assert result["push_after"] == "Closed", "the survivor could still push"


def test_messages_before_close_are_delivered(children, shm_name):
    """The creator pushes, closes and is gone before the consumer attaches."""
    with Ring.create(shm_name, 8) as ring:
        for seq in range(5):
            ring.push(SEQ.pack(seq))
        ring.close()
        result = report(peer(children, "consume", shm_name))
    assert result["got"] == 5 and result["errors"] == []
    assert result["error"] == "Closed"


@pytest.mark.parametrize("closer", ["creator", "attacher"])
@pytest.mark.parametrize("op", ["pop", "push"])
def test_close_wakes_blocked_side_here(children, shm_name, closer, op):
    """This process is blocked (pop on empty, push on full); the child at the
    other end closes once it sees it asleep. Afterwards this side's pushes
    raise Closed."""
    word = "cons_sleep" if op == "pop" else "prod_sleep"
    opts = ["--word", word] + (["--create", "8"] if closer == "creator" else [])
    if closer == "creator":
        child = peer(children, "close-when-asleep", shm_name, *opts)
        ring = attach_when_created(shm_name)
    else:
        ring = Ring.create(shm_name, 8)
        child = peer(children, "close-when-asleep", shm_name, *opts)
        wait_until(lambda: ring.peer_pid == child.pid, "the child attached")
    try:
        if op == "push":
            fill(ring)
        with watchdog(), pytest.raises(Closed) as info:
            if op == "pop":
                ring.pop(timeout=None)
            else:
                ring.push(SEQ.pack(99), timeout=None)
        detected = time.monotonic()
        assert not isinstance(info.value, PeerDied)
        result = report(child)
        assert result["error"] is None
        assert detected - result["t_close"] < WAKE
        for push in (lambda: ring.push(b"x", timeout=None),
                     lambda: ring.push(b"x", timeout=0),
                     lambda: ring.try_push(b"x"),
                     lambda: ring.push_many(np.zeros(1, "<u8"), timeout=None)):
            with pytest.raises(Closed):
                push()
    finally:
        ring.close()


# ---- 7. signals -----------------------------------------------------------


@pytest.mark.parametrize("op", ["pop", "push"])
def test_sigint_interrupts_blocked_child(children, shm_name, op):
    """SIGINT to a child blocked forever (pop on empty / push on full) ends it
    with KeyboardInterrupt at once: the futex wait returns EINTR to Python."""
    with Ring.create(shm_name, 8) as ring:
        if op == "pop":
            child, word = peer(children, "consume", shm_name), "cons_sleep"
        else:
            child, word = peer(children, "produce", shm_name), "prod_sleep"
        wait_until(lambda: asleep(ring, word), "the child is asleep")
        time.sleep(SETTLE)
        start = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=LIMIT)
        elapsed = time.monotonic() - start
    assert child.returncode == -signal.SIGINT, err.decode()
    assert b"KeyboardInterrupt" in err
    assert elapsed < WAKE, f"exit took {elapsed:.3f} s"


def _pin_apart(child_pid: int):
    """Run this thread and the child on different CPUs, so a signal can land
    while the child is running (not only while it is scheduled out)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to race a signal against a running waiter")
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    os.sched_setaffinity(child_pid, {cpus[1]})
    return old


def test_signal_arriving_while_waiter_spins_is_handled(children, shm_name):
    """The child pops forever; its SIGUSR1 handler answers b"sig". Each trial
    sends one message, then the signal right after the child took it, i.e.
    while it re-enters pop and spins. The handler must run within 1 s."""
    with Ring.create(shm_name, 8) as req, Ring.create(shm_name + "-back", 64) as back:
        child = peer(children, "signals", shm_name)
        assert back.pop(timeout=LIMIT) == b"ready"
        old = _pin_apart(child.pid)
        lost = None
        try:
            rng = random.Random(1)
            deadline = time.monotonic() + 6
            for trial in range(400):
                if time.monotonic() > deadline:
                    break
                req.push(b"x", timeout=LIMIT)
                wait_until(lambda: len(req) == 0, "the child took the message", poll=0)
                spin_until = time.perf_counter() + rng.uniform(0, 30e-6)
                while time.perf_counter() < spin_until:
                    pass
                os.kill(child.pid, signal.SIGUSR1)
                try:
                    while back.pop(timeout=WAKE) != b"sig":
                        pass  # b"died": the other bug, below
                except Empty:
                    lost = trial
                    break
        finally:
            os.sched_setaffinity(0, old)
        req.push(b"y", timeout=LIMIT)  # unblocks the child if it is stuck
        req.push(b"q", timeout=LIMIT)
        report(child)
    assert lost is None, f"trial {lost}: SIGUSR1 handler did not run within {WAKE} s"


def test_signals_never_make_a_live_peer_dead(children, shm_name):
    """Flood a child blocked in pop with SIGUSR1 (handler returns normally).
    Its waits are interrupted and resumed over and over; this process stays
    alive, so none may end in PeerDied."""
    with Ring.create(shm_name, 8) as req, Ring.create(shm_name + "-back", 64) as back:
        child = peer(children, "signals", shm_name)
        assert back.pop(timeout=LIMIT) == b"ready"
        wait_until(lambda: asleep(req, "cons_sleep"), "the child sleeps in pop")
        old = _pin_apart(child.pid)
        died = False
        try:
            deadline = time.monotonic() + 4
            while not died and time.monotonic() < deadline:
                for _ in range(200):
                    os.kill(child.pid, signal.SIGUSR1)
                while (msg := back.try_pop()) is not None:
                    died = died or msg == b"died"
        finally:
            os.sched_setaffinity(0, old)
        req.push(b"q", timeout=LIMIT)
        result = report(child)
    assert result["signals"] > 0
    assert result["peer_died"] == 0, f"{result['peer_died']} false PeerDied"


# ---- 8. nothing left in /dev/shm ------------------------------------------


def test_stream_leaves_no_segment_parent_creates(children, shm_name):
    with Ring.create(shm_name, 8) as ring:
        child = children.python("-m", "ringbuf.stream", "consume", shm_name,
                                "20000", "--timeout", "10")
        stream.produce(ring, 20_000, timeout=10)
        assert report(child)["errors"] == []
        assert os.path.exists(shm_path(shm_name))
    assert not os.path.exists(shm_path(shm_name))


def test_stream_leaves_no_segment_children_only(children, shm_name):
    """A child creates and produces (unlinking as it ends), another consumes;
    once both have exited, nothing is left under the name."""
    producer = peer(children, "produce", shm_name, "--create", "8",
                    "--count", "20000", "--unlink")
    with SegmentView(shm_name) as view:
        wait_until(lambda: view.header()["magic"] != 0, "the ring exists")
    consumer = children.python("-m", "ringbuf.stream", "consume", shm_name,
                               "20000", "--timeout", "10")
    assert report(consumer)["errors"] == []
    result = report(producer)
    assert result["sent"] == 20000 and result["error"] is None
    assert not os.path.exists(shm_path(shm_name))

