"""The event loop sleeps when idle and wakes on any inbound ring."""

import time

from procmgr.testing.inprocess import InProcessRuntime


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


def test_idle_clients_are_not_looked_at_in_every_pass():
    """Each client rings a doorbell of its own: a pass looks at the peers
    that rang or were busy lately (and at all of them every 100 ms), so
    idle ones cost it nothing. 60 idle clients, one busy one: a pass looks
    at a handful of peers, not at 63."""
    with InProcessRuntime(cores=1, threads=True, prefix="procmgr-test") as rt:
        idle = [rt.client() for _ in range(60)]
        busy = rt.client()
        for c in idle:                                  # each served once: all known
            c.spawn(["x"], core=0, timeout=5)
        time.sleep(0.25)                               # their passes and a sweep behind
        looked, passes = rt.loop.peers_looked_at, rt.loop.wakeups
        start = time.monotonic()
        for _ in range(300):
            busy.kill(busy.spawn(["x"], core=0, timeout=5), timeout=5)
        sweeps = (time.monotonic() - start) / 0.1 + 1
        per_pass = (rt.loop.peers_looked_at - looked - sweeps * 63) / (rt.loop.wakeups - passes)
        assert per_pass < 8, f"{per_pass:.1f} peers looked at per pass with 60 idle"
        assert all(c.in_flight == 0 for c in idle)
