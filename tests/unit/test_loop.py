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
