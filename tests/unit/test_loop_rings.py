"""RingSet (procmgr/_loop.c): the manager loop's arm, sleep, disarm and
wake, driven through real rings the way the event loop drives them."""

import os
import select
import threading
import time

import pytest

from procmgr._loop import RingSet
from procmgr.channel import Channel
from procmgr.osutil import watch_doorbell
from procmgr.protocol import Decoder, Msg, Op, send, take
from ringbuf import Ring


class Peer:
    """One peer's ring pair as both ends see it: the manager's Channel and
    the peer's own ends (it pushes requests, takes answers)."""

    def __init__(self, name: str, doorbell: int):
        requests, answers = Ring.create(name + "-req", 8), Ring.create(name + "-ans", 8)
        self.requests, self.answers = Ring.attach(requests.name), Ring.attach(answers.name)
        requests.unlink()       # both ends are mapped: nothing to leave in /dev/shm
        answers.unlink()
        self.requests.set_doorbell(doorbell)   # the peer pushes: ring the manager
        self.answers.set_doorbell(doorbell)    # the peer pops: ring it if it waits for room
        self.channel = Channel(requests, answers)
        self.pair = (requests, answers)

    def close(self) -> None:
        for ring in (self.requests, self.answers, *self.pair):
            ring.close()


@pytest.fixture
def loop(shm_name):
    """An epoll set with the doorbell in it, a RingSet on it and two peers."""
    doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    epoll = select.epoll()
    watch_doorbell(epoll, doorbell)
    peers = [Peer(f"{shm_name}-{i}", doorbell) for i in range(2)]
    rings = RingSet(epoll.fileno(), doorbell)
    rings.set([p.pair for p in peers])
    yield rings, peers, epoll, doorbell
    for p in peers:
        p.close()
    epoll.close()
    os.close(doorbell)


def test_a_ready_ring_is_reported_without_sleeping(loop):
    rings, peers, _, _ = loop
    assert send(peers[1].requests, Msg(Op.WAIT, 1))
    ready, fired = rings.wait(5.0, [])
    assert (ready, fired, rings.sleeps) == ([1], [], 0)
    # Still there until the manager takes it; then nothing is ready.
    assert rings.wait(0, [])[0] == [1]
    assert [m.seq for m in peers[1].channel.receive()] == [1]
    assert rings.wait(0, []) == ([], [])


def test_it_sleeps_until_a_peer_pushes_and_then_only_that_peer_is_ready(loop):
    rings, peers, _, _ = loop
    pusher = threading.Timer(0.2, send, (peers[0].requests, Msg(Op.WAIT, 7)))
    start = time.monotonic()
    pusher.start()
    try:
        ready, fired = rings.wait(5.0, [])
    finally:
        pusher.join()
    took = time.monotonic() - start
    assert (ready, fired, rings.sleeps) == ([0], [], 1)
    assert 0.15 < took < 2.0, f"woke after {took:.3f} s"


def test_a_sleep_ends_at_its_timeout_with_nothing_ready(loop):
    rings, _, _, _ = loop
    start = time.monotonic()
    assert rings.wait(0.1, []) == ([], [])
    assert 0.09 < time.monotonic() - start < 1.0
    assert rings.sleeps == 1


def test_watched_descriptors_are_reported_and_the_doorbell_is_not(loop):
    rings, _, epoll, doorbell = loop
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        epoll.register(r, select.EPOLLIN)
        os.write(w, b"x")
        ready, fired = rings.wait(5.0, [])
        assert ready == [] and fired == [(r, select.EPOLLIN)]
        os.read(r, 1)
        # The doorbell rung with nothing pushed: a wake-up, nothing to report.
        threading.Timer(0.05, os.eventfd_write, (doorbell, 1)).start()
        assert rings.wait(5.0, []) == ([], [])
    finally:
        epoll.unregister(r)
        os.close(r)
        os.close(w)


def test_a_peer_in_space_is_ready_when_its_answers_fit_not_when_it_sends(loop):
    rings, peers, _, _ = loop
    peer = peers[0]
    while send(peer.channel.outbound, Msg(Op.WAIT, 1)):
        pass                                       # its answer ring is full
    assert send(peer.requests, Msg(Op.WAIT, 2))   # and it has sent a request
    assert rings.wait(0, [0]) == ([], [])         # waiting for room: not ready
    assert rings.wait(0, [])[0] == [0]            # waiting for requests: ready
    threading.Timer(0.1, take, (peer.answers, Decoder(), 1)).start()
    ready, _ = rings.wait(5.0, [0])               # the peer makes room: wakes us
    assert ready == [0] and rings.sleeps == 1


def test_a_closed_peer_is_ready_so_the_loop_finds_out(loop):
    rings, peers, _, _ = loop
    peers[1].requests.close()
    assert rings.wait(5.0, [])[0] == [1]
    assert peers[1].channel.receive() == [] and peers[1].channel.peer_gone


def test_each_peer_is_woken_once_per_pass_and_only_for_news(loop):
    """The manager's answers go out as they are made (the rings batch their
    wakes, Channel); the peer is woken once, by wake() after the pass, and a
    peer sent nothing is not woken at all."""
    rings, peers, _, _ = loop
    bells = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in peers]

    def rung(i) -> bool:
        try:
            return os.eventfd_read(bells[i]) > 0
        except BlockingIOError:
            return False

    try:
        for peer, bell in zip(peers, bells):
            peer.channel.outbound.set_doorbell(bell)
            assert not peer.answers.arm()          # each peer sleeps on its doorbell
        for seq in (1, 2, 3):
            peers[0].channel.send(Msg(Op.WAIT, seq))
        assert not rung(0), "an answer woke the peer before the pass ended"
        rings.wake()
        assert rung(0) and not rung(1), "a peer sent nothing was woken"
        assert [m.seq for m in take(peers[0].answers, Decoder())] == [1, 2, 3]
        assert not peers[0].answers.arm()          # asleep again; this pass sends nothing
        rings.wake()
        assert not rung(0)
    finally:
        for bell in bells:
            os.close(bell)


def test_bad_arguments_get_clear_errors(loop):
    rings, peers, _, _ = loop
    with pytest.raises(IndexError, match="no peer 2"):
        rings.wait(0, [2])
    with pytest.raises(TypeError, match="ring pairs"):
        rings.set([peers[0].pair[0]])
    with pytest.raises(AttributeError):
        rings.set([("not", "rings")])
    # A refused set() leaves the old one in place.
    assert send(peers[0].requests, Msg(Op.WAIT, 1))
    assert rings.wait(0, [])[0] == [0]
