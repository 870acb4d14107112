"""The asyncio client (procmgr/client/aio.py): every request a coroutine,
answers taken in by the event loop when the manager rings the client's
socket -- no thread, no polling."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

import procmgr
from e2e_helpers import T, process_gone, rt, wait_until  # noqa: F401 (fixtures)
from procmgr import Err, ProcMgmtError


def run(coro, loop_factory=None):
    """``coro`` in a fresh event loop (asyncio's, or ``loop_factory``'s),
    bounded: a lost wake-up fails the test rather than hanging it."""
    async def bounded():
        return await asyncio.wait_for(coro, 60)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(bounded())


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request):
    """The standard loop, and uvloop's (which the client must work under too)."""
    if request.param == "asyncio":
        return None
    return pytest.importorskip("uvloop").new_event_loop


def test_spawn_wait_status_and_domains_are_coroutines(rt, loop_factory):
    async def main():
        async with await rt.aclient() as pm:
            assert isinstance(pm, procmgr.AsyncClient)
            d = await pm.spawn(["/bin/sh", "-c", "exit 7"], core=1)
            assert await pm.wait(d) == 7
            info = await pm.status(d)
            assert info.exit_status == 7 and info.cores == [1]
            sleeper = await pm.spawn(["sleep", "60"])          # looked up in PATH
            assert await pm.wait(sleeper, nohang=True) is None
            assert sleeper.id in await pm.domains()
            assert await pm.span(sleeper, 1) > 0
            await pm.kill(sleeper)
            assert await pm.wait(sleeper) == 9
            assert all(process_gone(pid) for pid in (await pm.status(sleeper)).pids)
            assert (await pm.stats())["cores"]
            assert pm.in_flight == 0
    run(main(), loop_factory)


def test_many_concurrent_spawns_each_get_their_own_answer(rt, loop_factory):
    async def main():
        pm = await procmgr.aconnect(rt.name)
        try:
            async def one(i):
                d = await pm.spawn(["/bin/sh", "-c", f"exit {i % 50}"], core=i % 2,
                                   stdout=procmgr.DEVNULL, stderr=procmgr.DEVNULL)
                return await pm.wait(d, timeout=T)
            assert await asyncio.gather(*(one(i) for i in range(300))) == \
                [i % 50 for i in range(300)]
        finally:
            pm.close()
    run(main(), loop_factory)


def test_the_loop_sleeps_on_the_socket_no_thread_no_polling(rt):
    """While a wait is outstanding for a second, the loop's thread is
    asleep: nearly no CPU, no other thread started."""
    async def main():
        pm = await rt.aclient()
        d = await pm.spawn(["/bin/sleep", "1"])
        threads = threading.active_count()
        cpu = os.times()
        assert await pm.wait(d, timeout=T) == 0
        used = (os.times().user - cpu.user) + (os.times().system - cpu.system)
        assert used < 0.2, f"{used:.2f} s of CPU while waiting a second"
        assert threading.active_count() == threads
    run(main())


def test_run_output_and_follow(rt):
    async def main():
        pm = await rt.aclient()
        r = await pm.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
        r = await pm.run(["/bin/cat"], input="x\n", text=True, check=True)
        assert r.stdout == "x\n"
        with pytest.raises(procmgr.CalledProcessError):
            await pm.run(["/bin/false"], check=True)
        with pytest.raises(procmgr.TimeoutExpired):
            await pm.run(["/bin/sleep", "60"], timeout=0.3)
        d = await pm.spawn(["/bin/sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.05; done"])
        pieces = [piece async for piece in pm.follow(d)]
        assert b"".join(pieces) == b"1\n2\n3\n"
        assert await pm.output(d) == b"1\n2\n3\n"
        by_id = [p async for p in pm.follow(d.id)]          # ended: what it wrote, then done
        assert b"".join(by_id) == b"1\n2\n3\n"
    run(main())


def test_a_timeout_or_a_cancelled_task_leaves_the_client_consistent(rt):
    async def main():
        pm = await rt.aclient()
        d = await pm.spawn(["/bin/sleep", "60"])
        with pytest.raises(TimeoutError, match="within 0.2 s"):
            await pm.wait(d, timeout=0.2)
        task = asyncio.create_task(pm.wait(d))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):                  # asyncio's own, also fine
                await pm.wait(d)
        await pm.kill(d)
        assert await pm.wait(d) == 9                          # later answers still come
        d2 = await pm.spawn(["/bin/true"])
        assert await pm.wait(d2) == 0
        # The abandoned waits were answered and dropped, not left in flight.
        for _ in range(100):
            if pm.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert pm.in_flight == 0
    run(main())


def test_errors_are_the_sync_clients(rt):
    async def main():
        pm = await rt.aclient()
        with pytest.raises(TypeError, match="str"):
            await pm.spawn("/bin/echo hi")
        with pytest.raises(ProcMgmtError) as e:
            await pm.spawn(["/bin/true"], core=7)
        assert e.value.code == Err.INVALID_SPAWND
        with pytest.raises(ProcMgmtError) as e:
            await pm.spawn(["/no/such/program"])
        assert e.value.code == Err.EXEC_FAILED
        d = await pm.spawn(["/bin/true"])
        await pm.wait(d)
        with pytest.raises(ProcMgmtError) as e:
            await pm.kill(d)
        assert e.value.code == Err.DOMAIN_NOT_RUNNING
    run(main())


@pytest.mark.parametrize("end", [signal.SIGKILL, signal.SIGTERM])
def test_a_manager_that_dies_or_stops_fails_every_awaiter_with_runtime_gone(rt, loop_factory,
                                                                            end):
    """Killed (its socket's end of file) or stopping in order (its rings
    closed, which rings the socket): every await ends with RuntimeGone."""
    async def main():
        pm = await rt.aclient()
        d = await pm.spawn(["/bin/sleep", "60"])
        waiters = [asyncio.create_task(pm.wait(d)) for _ in range(3)]
        await asyncio.sleep(0.1)
        os.kill(rt.proc.pid, end)
        for task in waiters:
            with pytest.raises(procmgr.RuntimeGone):
                await asyncio.wait_for(task, T)
        with pytest.raises(procmgr.RuntimeGone):
            await pm.spawn(["/bin/true"])
    run(main(), loop_factory)
    rt.proc.wait(timeout=T)


def test_closing_the_client_answers_its_awaiters(rt):
    async def main():
        pm = await rt.aclient()
        d = await pm.spawn(["/bin/sleep", "60"])
        waiter = asyncio.create_task(pm.wait(d))
        await asyncio.sleep(0.05)
        pm.close()
        with pytest.raises(procmgr.RuntimeGone, match="closed"):
            await asyncio.wait_for(waiter, T)
        other = rt.client()                             # the runtime serves on
        other.kill(d, timeout=T)
        assert other.wait(d, timeout=T) == 9
    run(main())


def test_aconnect_to_no_runtime_says_so():
    async def main():
        with pytest.raises(procmgr.RuntimeNotFound):
            await procmgr.aconnect(f"no-such-runtime-{os.getpid()}")
    run(main())


def test_a_client_that_arms_and_never_reads_its_socket_holds_nobody_up(rt):
    """The manager's end of the socket is non-blocking and its own: a
    client that has it rung and never reads it fills the buffer, and the
    manager goes on serving (procmgr/manager/server.py, the waker)."""
    import fcntl
    import termios
    import time

    hog, other = rt.client(), rt.client()
    d = hog.spawn(["/bin/sleep", "60"], timeout=T)
    queued = bytearray(4)
    deadline = time.monotonic() + 30
    rings, full_since, last = 0, None, -1
    while time.monotonic() < deadline:
        hog.responses.arm()             # asleep on the socket, as far as it says
        futs = [hog.status_async(d) for _ in range(8)]
        while not all(f.done() for f in futs):
            hog.poll()
        rings += 1
        fcntl.ioctl(hog._connection.fileno(), termios.FIONREAD, queued)
        now = int.from_bytes(queued, "little")
        if now != last:
            last, full_since = now, rings
        elif rings - full_since >= 300:
            break                       # rung 300 times more, nothing more queued: full
    # (A few hundred 8-byte rings fill it: the kernel counts each by its buffer.)
    assert last > 0 and rings - full_since >= 300, f"not full after {rings} rings"
    start = time.monotonic()
    assert other.wait(other.spawn(["/bin/true"], timeout=T), timeout=T) == 0
    assert hog.status(d, timeout=T).state == procmgr.State.RUNNING
    assert time.monotonic() - start < 2
    hog.kill(d, timeout=T)
