"""A client of the same user scribbling on its own rings: every word of a
segment is writable by both ends, so each attack here writes one -- a lying
length, each index, random header words -- and rings the manager. Each
asserts what everybody else sees: the manager is alive, a victim's request
in flight is answered, a fresh client is served within a second, the
manager's CPU is back below 5% within a second, and only the attacker is
dropped (its next request fails, the manager counts and logs it)."""

from __future__ import annotations

import mmap
import os
import random
import struct
import time

import psutil
import pytest

import procmgr
from procmgr.osutil import runtime_dir
from procmgr.protocol import Flag, Msg, Op, send
from ringbuf import Closed, RingError
from ringbuf.ring import HEADER_DTYPE, HEADER_SIZE

from e2e_helpers import T, as_root, pm, ring_files, rt  # noqa: F401  (fixtures)

U64 = 1 << 64


def offset(field: str) -> int:
    return HEADER_DTYPE.fields[field][1]


def read_u64(ring, field: str) -> int:
    return struct.unpack_from("<Q", ring._mmap, offset(field))[0]


def write_u64(ring, field: str, value: int) -> None:
    struct.pack_into("<Q", ring._mmap, offset(field), value % U64)


def ring_manager(pm) -> None:
    """What a producer does after publishing: wake the manager."""
    os.eventfd_write(pm._doorbell, 1)


def manager_of(rt) -> psutil.Process:
    return psutil.Process(rt.proc.pid)


def cpu_share(proc: psutil.Process, seconds: float = 0.5) -> float:
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - before) / seconds


class Victims:
    """Clients with a request in flight when the attack comes."""

    def __init__(self, rt, n: int = 3):
        self.clients = [rt.client() for _ in range(n)]
        self.domains = [pm.spawn(["/bin/sleep", "0.3"], timeout=T) for pm in self.clients]
        self.waits = [pm.wait_async(d) for pm, d in zip(self.clients, self.domains)]

    def all_answered(self) -> None:
        for pm, fut in zip(self.clients, self.waits):
            assert pm.wait_for(fut, timeout=T) == 0
        for pm in self.clients:         # and they go on being served
            assert pm.wait(pm.spawn(["/bin/true"], timeout=T), timeout=T) == 0


def assert_only_the_attacker_went(rt, victims: Victims, attacker, dropped_before: int) -> None:
    assert rt.proc.poll() is None, "the manager died"
    victims.all_answered()
    start = time.monotonic()
    fresh = procmgr.connect(rt.name)
    try:
        assert fresh.domains(timeout=1.0) is not None
        assert time.monotonic() - start < 1.0
    finally:
        fresh.close()
    # The attacker's ring is closed under it: its next request fails.
    with pytest.raises((procmgr.RuntimeGone, procmgr.ProcMgmtError, TimeoutError)):
        attacker.wait(attacker.spawn(["/bin/true"], timeout=2.0), timeout=2.0)
    stats = rt.monitor.stats(timeout=T)
    assert stats["peers_dropped"] == dropped_before + 1
    with open(os.path.join(runtime_dir(rt.name), "runtime.log")) as f:
        assert "dropped: it broke its ring" in f.read()
    deadline = time.monotonic() + 1.0
    while (share := cpu_share(manager_of(rt), 0.3)) >= 0.05 and time.monotonic() < deadline:
        pass
    assert share < 0.05, f"the manager still uses {share:.0%} of a CPU"


def attack(rt, scribble) -> None:
    victims = Victims(rt)
    attacker = procmgr.connect(rt.name)
    dropped = rt.monitor.stats(timeout=T)["peers_dropped"]
    try:
        assert attacker.domains(timeout=T) == attacker.domains(timeout=T)   # attached, served
        scribble(attacker)
        ring_manager(attacker)
        assert_only_the_attacker_went(rt, victims, attacker, dropped)
    finally:
        attacker.close()


def publish_with_length(length: int):
    """A slot published whose length word says ``length``."""
    def scribble(pm):
        ring = pm.requests
        tail = read_u64(ring, "prod_tail")
        lens = HEADER_SIZE + (tail & (ring.capacity - 1)) * 4
        struct.pack_into("<I", ring._mmap, lens, length)
        write_u64(ring, "prod_tail", tail + 1)
    return scribble


def test_a_lying_length_drops_that_client_only(rt):
    """The consumer refused it before; the manager then died of the
    exception (every other client lost its answers)."""
    attack(rt, publish_with_length(100_000))


@pytest.mark.parametrize("how", ["far_ahead", "behind_head", "one_past_capacity"])
def test_a_lying_producer_index_drops_that_client_only(rt, how):
    """prod_tail far ahead made the manager spin at 100% forever, serving
    nobody: the loop never slept and never looked at its socket or pidfds."""
    def scribble(pm):
        ring = pm.requests
        head = read_u64(ring, "cons_head")
        lie = {"far_ahead": head + (1 << 40), "behind_head": head - 1,
               "one_past_capacity": head + ring.capacity + 1}[how]
        write_u64(ring, "prod_tail", lie)
    attack(rt, scribble)


def test_a_lying_consumer_index_on_the_answers_ring_drops_that_client_only(rt):
    """The client consumes its answers: a cons_head ahead of what the
    manager published is found when the manager next looks for room --
    once the answers it has sent fill what it last saw free. The attacker
    sends without ever reading (reading would publish its true head)."""
    victims = Victims(rt)
    attacker = procmgr.connect(rt.name)
    dropped = rt.monitor.stats(timeout=T)["peers_dropped"]
    try:
        d = attacker.spawn(["/bin/sleep", "30"], timeout=T)
        ring = attacker.responses
        write_u64(ring, "cons_head", read_u64(ring, "prod_tail") + 12345)
        request = Msg(Op.WAIT, dom=d.id, nonce=d.nonce, flags=Flag.NOHANG, seq=1)
        sent, deadline = 0, time.monotonic() + T
        while sent < ring.capacity + 16 and time.monotonic() < deadline:
            try:
                if send(attacker.requests, request):
                    sent += 1
                else:
                    ring_manager(attacker)
                    attacker.requests.wait_space(0.05)
            except (Closed, RingError):
                break                   # dropped already
        ring_manager(attacker)
        assert_only_the_attacker_went(rt, victims, attacker, dropped)
    finally:
        attacker.close()


def test_its_own_index_words_written_by_the_client_change_nothing(rt, pm):
    """The manager keeps the index it owns (the requests ring's cons_head)
    in its own memory: a client rewriting the shared copy, or the lines that
    once held cached copies, is not believed, and is served as before."""
    ring = pm.requests
    assert pm.wait(pm.spawn(["/bin/true"], timeout=T), timeout=T) == 0
    write_u64(ring, "cons_head", read_u64(ring, "cons_head") + 3)
    for line in (3, 4):
        ring._mmap[line * 64:(line + 1) * 64] = os.urandom(64)
    ring_manager(pm)
    # Its next requests are served (once the manager publishes its own
    # cons_head again, the shared word is right again).
    for _ in range(5):
        assert pm.wait(pm.spawn(["/bin/true"], timeout=T), timeout=T) == 0


@pytest.mark.parametrize("seed", range(4))
def test_random_header_words_never_take_the_manager_down(rt, seed):
    """Lines 1-7 of the requests ring's header (everything but the
    geometry, which is read once, at attach) filled with random words, and
    the same on the answers ring: the manager either serves the client on
    or drops it -- and serves everyone else either way."""
    rng = random.Random(seed)
    victims = Victims(rt)
    attacker = procmgr.connect(rt.name)
    try:
        for ring in (attacker.requests, attacker.responses):
            ring._mmap[64:HEADER_SIZE] = bytes(rng.getrandbits(8) for _ in range(HEADER_SIZE - 64))
        ring_manager(attacker)
        time.sleep(0.1)
        assert rt.proc.poll() is None
        victims.all_answered()
        fresh = procmgr.connect(rt.name)
        start = time.monotonic()
        assert fresh.domains(timeout=1.0) is not None and time.monotonic() - start < 1.0
        fresh.close()
        deadline = time.monotonic() + 1.0
        while (share := cpu_share(manager_of(rt), 0.3)) >= 0.05 and time.monotonic() < deadline:
            pass
        assert share < 0.05, f"the manager still uses {share:.0%} of a CPU"
    finally:
        attacker.close()


@as_root
def test_no_one_can_shrink_a_ring_under_the_manager(rt):
    """A segment shrunk under a process that maps it kills that process
    with SIGBUS at its next access. The rings are sealed memory files: the
    client cannot shrink its own, nor can any process of the user through
    the manager's descriptors in /proc. Zeroing the pages instead (or
    punching a hole, which reads the same) is a lying index like the
    others: that client is dropped, everyone else served."""
    victims = Victims(rt)
    attacker = procmgr.connect(rt.name)
    dropped = rt.monitor.stats(timeout=T)["peers_dropped"]
    try:
        for _ in range(3):
            assert attacker.domains(timeout=T) is not None
        theirs = [f"/proc/{rt.proc.pid}/fd/{fd}" for fd in ring_files(rt.proc.pid)]
        ours = [f"/proc/self/fd/{fd}" for fd in ring_files(os.getpid(), f"client@{os.getpid()}")]
        assert theirs and ours
        for path in theirs + ours:
            fd = os.open(path, os.O_RDWR)
            try:
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        # The attacker's own requests ring: the one mapped last by this process.
        requests = attacker.requests
        size = len(requests._mmap)
        requests._mmap[:] = bytes(size)           # every word zero, the header's too
        ring_manager(attacker)
        assert_only_the_attacker_went(rt, victims, attacker, dropped)
    finally:
        attacker.close()


BELL_RINGER = """
import os, sys, time, procmgr
pm = procmgr.connect(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    for _ in range(1000):
        os.eventfd_write(pm._doorbell, 1)
    n += 1000
print(n, flush=True)
"""


def test_a_doorbell_flood_wakes_the_manager_for_nothing_and_nobody_waits(rt, children):
    """A client ringing the manager's doorbell (an eventfd every client is
    given) in a tight loop for a second: each ring wakes the manager to
    rings with nothing in them. Everybody else is served meanwhile -- a
    request in flight, new requests, a new client within a second -- and
    once the ringing stops the manager goes back to sleep."""
    victims = Victims(rt)
    ringer = children.python("-c", BELL_RINGER, rt.name, "1.5")
    time.sleep(0.3)                                   # the flood is on
    start = time.monotonic()
    fresh = procmgr.connect(rt.name)
    assert fresh.domains(timeout=1.0) is not None and time.monotonic() - start < 1.0
    fresh.close()
    victims.all_answered()
    out, _ = ringer.communicate(timeout=T)
    assert ringer.returncode == 0 and int(out) > 10_000, out      # it did ring
    assert rt.proc.poll() is None
    deadline = time.monotonic() + 1.0
    while (share := cpu_share(manager_of(rt), 0.3)) >= 0.05 and time.monotonic() < deadline:
        pass
    assert share < 0.05, f"the manager still uses {share:.0%} of a CPU"


@as_root
def test_a_worker_whose_ring_breaks_is_ended_like_a_dead_one(rt, pm):
    """Root can reach a worker's rings through /proc/<worker>/fd (no other
    process of the user can: the worker is non-dumpable). A lie written
    into one (here: the replies ring's
    prod_tail, far ahead) makes the manager end that worker, and what waited
    on it is answered as for a worker that died (its domain: -9); the other
    core serves on."""
    workers = sorted(manager_of(rt).children(), key=lambda p: p.pid)
    d = pm.spawn(["/bin/sleep", "30"], core=0, timeout=T)
    waiting = pm.wait_async(d)
    worker = next(w for w in workers if pm.status(d).pids[0] in {c.pid for c in w.children()})
    files = ring_files(worker.pid, "spawnd.0.replies")
    assert files, "the worker maps its replies ring"
    fd = os.open(f"/proc/{worker.pid}/fd/{files[0]}", os.O_RDWR)
    try:
        with mmap.mmap(fd, os.fstat(fd).st_size) as mm:
            struct.pack_into("<Q", mm, offset("prod_tail"),
                             (struct.unpack_from("<Q", mm, offset("cons_head"))[0] + (1 << 40)) % U64)
    finally:
        os.close(fd)
    ring_manager(pm)
    worker.wait(timeout=T)                                # ended by the manager
    assert not worker.is_running()
    assert pm.wait_for(waiting, timeout=T) == -9         # its domains end with it
    assert pm.wait(pm.spawn(["/bin/true"], core=1, timeout=T), timeout=T) == 0
    assert rt.monitor.stats(timeout=T)["peers_dropped"] == 1
