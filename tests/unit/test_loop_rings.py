"""RingSet (procmgr/manager/core/_loop.c): the manager loop's arm, sleep, disarm, serve
and wake, driven through real rings the way the event loop drives them,
with a real core behind it (procmgr/manager/core/serve.c, core_serve)."""

import os
import select
import threading
import time

import pytest

from procmgr.manager._core import PEER_CLIENT, RingSet
from procmgr.manager.channel import Channel
from procmgr.errors import Err
from procmgr.manager.manager import Manager
from procmgr.osutil import watch_doorbell
from procmgr.protocol import Decoder, Msg, Op, send, take
from ringbuf import Ring


def python_request(seq):
    """A request the core leaves to Python (handlers.py answers it): it
    stays in the ring, and the loop reports its peer ready."""
    return Msg(Op.GET_STATS, seq)


def c_request(seq):
    """A request the core serves in C: a wait on a domain that does not exist."""
    return Msg(Op.WAIT, seq, dom=999)


class Peer:
    """One client's ring pair as both ends see it: the manager's Channel
    and the client's own ends (it pushes requests, takes answers)."""

    def __init__(self, name: str, doorbell: int, mgr: Manager):
        requests, answers = Ring.create(name + "-req", 8), Ring.create(name + "-ans", 8)
        self.requests, self.answers = Ring.attach(requests.name), Ring.attach(answers.name)
        requests.unlink()       # both ends are mapped: nothing to leave in /dev/shm
        answers.unlink()
        self.requests.set_doorbell(doorbell)   # the peer pushes: ring the manager
        self.answers.set_doorbell(doorbell)    # the peer pops: ring it if it waits for room
        self.channel = Channel(requests, answers)
        self.binding = mgr.add_client(self.channel)
        self.entry = (requests, answers, PEER_CLIENT, self.binding.id)

    def close(self) -> None:
        for ring in (self.requests, self.answers, self.channel.inbound, self.channel.outbound):
            ring.close()


@pytest.fixture
def loop(shm_name):
    """An epoll set with the doorbell in it, a RingSet on it and two clients."""
    doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    epoll = select.epoll()
    watch_doorbell(epoll, doorbell)
    mgr = Manager()
    peers = [Peer(f"{shm_name}-{i}", doorbell, mgr) for i in range(2)]
    rings = RingSet(epoll.fileno(), doorbell, mgr.core)
    rings.set([p.entry for p in peers])
    yield rings, peers, epoll, doorbell
    for p in peers:
        p.close()
    epoll.close()
    os.close(doorbell)


def test_a_ready_ring_is_reported_without_sleeping(loop):
    rings, peers, _, _ = loop
    assert send(peers[1].requests, python_request(1))
    ready, fired = rings.wait(5.0)
    assert (ready, fired, rings.sleeps, rings.served) == ([1], [], 0, 0)
    # Still there until the manager takes it; then nothing is ready.
    assert rings.wait(0)[0] == [1]
    assert [m.seq for m in peers[1].channel.receive()] == [1]
    assert rings.wait(0) == ([], [])


def test_it_sleeps_until_a_peer_pushes_and_then_only_that_peer_is_ready(loop):
    rings, peers, _, _ = loop
    pusher = threading.Timer(0.2, send, (peers[0].requests, python_request(7)))
    start = time.monotonic()
    pusher.start()
    try:
        ready, fired = rings.wait(5.0)
    finally:
        pusher.join()
    took = time.monotonic() - start
    assert (ready, fired, rings.sleeps) == ([0], [], 1)
    assert 0.15 < took < 2.0, f"woke after {took:.3f} s"


def test_what_the_core_serves_is_answered_and_it_sleeps_again_without_returning(loop):
    """A request served in C leaves nothing for Python: the wait goes on
    (a second sleep) until something Python must see comes."""
    rings, peers, _, _ = loop
    first = threading.Timer(0.05, send, (peers[0].requests, c_request(1)))
    second = threading.Timer(0.3, send, (peers[0].requests, python_request(2)))
    first.start()
    second.start()
    try:
        ready, fired = rings.wait(5.0)
    finally:
        first.join()
        second.join()
    assert (ready, fired, rings.served, rings.sleeps) == ([0], [], 1, 2)
    answer, = take(peers[0].answers, Decoder())
    assert (answer.op, answer.seq, answer.err) == (Op.WAIT, 1, Err.DOMAIN_TABLE_FIND)


def test_serving_in_c_still_returns_by_the_timeout(loop):
    """Requests the core serves keep coming, none for Python: the wait
    still returns by its timeout, so the loop's caller gets its rounds
    (handshake deadlines, ring names to unlink)."""
    rings, peers, _, _ = loop
    stop = threading.Event()

    def keep_asking():
        seq = 0
        while not stop.is_set():
            seq += 1
            send(peers[0].requests, c_request(seq))
            take(peers[0].answers, Decoder())       # keep its answer ring open
            time.sleep(0.002)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        start = time.monotonic()
        rings.wait(0.2)
        took = time.monotonic() - start
    finally:
        stop.set()
        asker.join()
    assert rings.served > 10, "the core served nothing: the test tested nothing"
    assert took < 0.5, f"returned after {took:.3f} s"


def test_a_sleep_ends_at_its_timeout_with_nothing_ready(loop):
    rings, _, _, _ = loop
    start = time.monotonic()
    assert rings.wait(0.1) == ([], [])
    assert 0.09 < time.monotonic() - start < 1.0
    assert rings.sleeps == 1


def test_interrupt_from_another_thread_ends_a_wait(loop):
    rings, _, _, _ = loop
    threading.Timer(0.1, rings.interrupt).start()
    start = time.monotonic()
    assert rings.wait(5.0) == ([], [])
    assert time.monotonic() - start < 2.0
    # Asked once, returned once: the next wait sleeps to its timeout.
    start = time.monotonic()
    assert rings.wait(0.1) == ([], [])
    assert time.monotonic() - start >= 0.09


def test_watched_descriptors_are_reported_and_the_doorbell_is_not(loop):
    rings, _, epoll, doorbell = loop
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        epoll.register(r, select.EPOLLIN)
        os.write(w, b"x")
        ready, fired = rings.wait(5.0)
        assert ready == [] and fired == [(r, select.EPOLLIN)]
        os.read(r, 1)
        # The doorbell rung with nothing pushed: a wake-up, nothing to report.
        threading.Timer(0.05, os.eventfd_write, (doorbell, 1)).start()
        assert rings.wait(5.0) == ([], [])
    finally:
        epoll.unregister(r)
        os.close(r)
        os.close(w)


def test_a_peer_whose_answers_wait_for_room_is_not_read_until_they_fit(loop):
    rings, peers, _, _ = loop
    peer = peers[0]
    for seq in range(1, 9):                        # eight answers fill its ring
        assert send(peer.requests, c_request(seq))
    assert rings.wait(0) == ([], []) and rings.served == 8
    assert send(peer.requests, c_request(9))       # its answer waits in the outbox
    assert rings.wait(0) == ([], []) and rings.served == 9
    assert send(peer.requests, c_request(10))      # and this is not read meanwhile
    assert rings.wait(0) == ([], []) and rings.served == 9
    taken = []
    threading.Timer(0.1, lambda: taken.extend(take(peer.answers, Decoder(), 1))).start()
    ready, _ = rings.wait(5.0)                     # the peer makes room: wakes us
    assert ready == [0] and rings.sleeps == 1
    # Python's pass (loop.poll) flushes the outbox; then the core reads on.
    assert peer.binding._core.flush(PEER_CLIENT, peer.binding.id)
    assert rings.wait(0) == ([], []) and rings.served == 10
    answers = taken + take(peer.answers, Decoder())   # 2-9 filled the ring again,
    assert peer.binding._core.flush(PEER_CLIENT, peer.binding.id)   # 10 waited
    answers += take(peer.answers, Decoder())
    assert [m.seq for m in answers] == list(range(1, 11))


def test_a_closed_peer_is_ready_so_the_loop_finds_out(loop):
    rings, peers, _, _ = loop
    peers[1].requests.close()
    assert rings.wait(5.0)[0] == [1]
    assert peers[1].channel.receive() == [] and peers[1].channel.peer_gone


def test_each_peer_is_woken_once_per_pass_and_only_for_news(loop):
    """The core's answers go into the ring as they are made (the rings
    batch their wakes); the peer is woken once, after the pass, and a peer
    sent nothing is not woken at all."""
    rings, peers, _, _ = loop
    bells = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in peers]

    def rings_of(i) -> int:
        try:
            return os.eventfd_read(bells[i])
        except BlockingIOError:
            return 0

    try:
        for peer, bell in zip(peers, bells):
            peer.channel.outbound.set_doorbell(bell)
            assert not peer.answers.arm()          # each peer sleeps on its doorbell
        for seq in (1, 2, 3):
            assert send(peers[0].requests, c_request(seq))
        rings.wait(0)
        assert (rings_of(0), rings_of(1)) == (1, 0)
        assert [m.seq for m in take(peers[0].answers, Decoder())] == [1, 2, 3]
        assert not peers[0].answers.arm()          # asleep again; this pass sends nothing
        rings.wait(0)
        rings.wake()
        assert rings_of(0) == 0
    finally:
        for bell in bells:
            os.close(bell)


def test_bad_arguments_get_clear_errors(loop):
    rings, peers, _, _ = loop
    with pytest.raises(TypeError, match=r"wait\(timeout\)"):
        rings.wait(0, [])
    with pytest.raises(TypeError, match="kind, key"):
        rings.set([peers[0].entry[:2]])
    with pytest.raises(AttributeError):
        rings.set([("not", "rings", PEER_CLIENT, 1)])
    # A refused set() leaves the old one in place.
    assert send(peers[0].requests, python_request(1))
    assert rings.wait(0)[0] == [0]
