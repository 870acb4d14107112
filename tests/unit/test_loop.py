"""The event loop sleeps when idle and wakes on any inbound ring."""

import time

from procmgr.inprocess import InProcessRuntime


def test_loop_answers_from_its_own_thread_and_sleeps_when_idle():
    with InProcessRuntime(cores=2, threads=True, prefix="procmgr-test") as rt:
        client = rt.client()
        dom = client.spawn(["/bin/true"], core=1, timeout=5)
        assert dom.core == 1 and dom.pid > 0

        # Idle: the loop is asleep on its doorbell, not spinning.
        before = rt.loop.wakeups
        time.sleep(0.5)
        assert rt.loop.wakeups - before <= 2, "the idle loop keeps waking up"

        # A request wakes it at once (well under the 1 s idle timeout).
        start = time.monotonic()
        assert client.wait(dom, nohang=True, timeout=5) is None
        assert time.monotonic() - start < 0.5


def test_many_clients_are_all_served():
    with InProcessRuntime(cores=2, threads=True, prefix="procmgr-test") as rt:
        clients = [rt.client() for _ in range(5)]
        futures = [(c, c.spawn_async(["x"], core=i % 2)) for i, c in enumerate(clients * 20)]
        doms = [c.wait_for(f, timeout=10) for c, f in futures]
        assert len({d.id for d in doms}) == 100
        assert sorted(clients[0].domains(timeout=5)) == sorted(d.id for d in doms)


def test_a_channel_wakes_its_peer_once_per_pass_and_only_for_news(shm_name):
    """The manager's answers go out as they are made, the peer is woken
    once after the pass; a peer sent nothing is not woken at all."""
    import os

    from procmgr.channel import Channel
    from procmgr.protocol import Decoder, Msg, Op, take
    from ringbuf import Ring

    answers = Ring.create(shm_name, 64)
    peer = Ring.attach(shm_name)
    requests = Ring.create(shm_name + "-back", 64)
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def rung() -> bool:
        try:
            return os.eventfd_read(bell) > 0
        except BlockingIOError:
            return False

    try:
        channel = Channel(requests, answers)
        answers.set_doorbell(bell)
        assert not peer.arm()                  # the peer sleeps on its doorbell
        for seq in (1, 2, 3):
            channel.send(Msg(Op.WAIT, seq))
        assert not rung(), "an answer woke the peer before the pass ended"
        channel.wake_peer()
        assert rung()
        assert [m.seq for m in take(peer, Decoder())] == [1, 2, 3]
        assert not peer.arm()                  # asleep again; this pass sends nothing
        channel.wake_peer()
        assert not rung(), "a peer sent nothing was woken"
    finally:
        os.close(bell)
        for ring in (peer, answers, requests):
            ring.close()
        answers.unlink()
        requests.unlink()
