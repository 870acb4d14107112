"""The client's futures are concurrent.futures.Futures, and one client
serves many threads (procmgr/client/client.py, Future and Client)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest

import procmgr
from e2e_helpers import T, pm, rt  # noqa: F401 (fixtures)
from procmgr import Err, ProcMgmtError


def test_a_future_is_a_concurrent_futures_future(pm):
    fut = pm.spawn_async(["/bin/sh", "-c", "exit 4"])
    assert isinstance(fut, concurrent.futures.Future) and isinstance(fut, procmgr.Future)
    d = fut.result(timeout=T)                       # drives the client while it waits
    assert fut.done() and not fut.running() and not fut.cancelled()
    assert fut.exception(timeout=0) is None
    waiter = pm.wait_async(d)
    assert waiter.cancel() is False                 # sent already: its answer will come
    assert waiter.result(timeout=T) == 4


def test_result_with_a_timeout_raises_timeout_error_and_stays_usable(pm):
    d = pm.spawn(["/bin/sleep", "60"], timeout=T)
    waiter = pm.wait_async(d)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        waiter.result(timeout=0.2)
    assert 0.15 <= time.monotonic() - start < 5 and not waiter.done()
    pm.kill(d, timeout=T)
    assert waiter.result(timeout=T) == 9


def test_a_failed_request_is_its_exception(pm):
    fut = pm.spawn_async(["/bin/true"], core=9)
    error = fut.exception(timeout=T)
    assert isinstance(error, ProcMgmtError) and error.code == Err.INVALID_SPAWND
    with pytest.raises(ProcMgmtError):
        fut.result()


def test_wait_and_as_completed_take_them(pm):
    spawns = [pm.spawn_async(["/bin/sh", "-c", f"exit {k}"]) for k in range(6)]
    done, not_done = concurrent.futures.wait(spawns, timeout=0)
    # Nobody took the answers in yet: wait() itself does not read the ring,
    # so a thread that does (result) is what completes them.
    reader = threading.Thread(target=lambda: [f.result(timeout=T) for f in spawns])
    reader.start()
    done, not_done = concurrent.futures.wait(spawns, timeout=T)
    reader.join(T)
    assert not not_done and len(done) == 6
    waits = {pm.wait_async(f.result()): k for k, f in enumerate(spawns)}
    reader = threading.Thread(target=lambda: [f.result(timeout=T) for f in waits])
    reader.start()
    seen = {waits[f]: f.result() for f in concurrent.futures.as_completed(waits, timeout=T)}
    reader.join(T)
    assert seen == {k: k for k in range(6)}


def test_asyncio_wrap_future_takes_it(pm):
    async def main():
        d = pm.spawn(["/bin/sh", "-c", "exit 3"], timeout=T)
        fut = pm.wait_async(d)
        loop = asyncio.get_running_loop()
        wrapped = asyncio.wrap_future(fut)
        # A thread takes the answer in; the event loop is told.
        await loop.run_in_executor(None, fut.result, T)
        return await asyncio.wait_for(wrapped, T)
    assert asyncio.run(main()) == 3


def test_a_callback_error_is_logged_not_raised_into_another_call(pm, caplog):
    fut = pm.spawn_async(["/bin/true"])
    fut.add_done_callback(lambda f: 1 / 0)
    other = pm.spawn_async(["/bin/true"])
    assert pm.wait(other.result(timeout=T), timeout=T) == 0    # takes both answers in
    assert fut.done() and "ZeroDivisionError" in caplog.text
    assert pm.wait(fut.result(), timeout=T) == 0


def test_one_client_serves_sixteen_threads(pm):
    """Each thread spawns, waits and checks its own programs; every answer
    reaches its caller, and nothing hangs (3 of 5 runs of 4 threads hung
    when one thread could take another's answer)."""
    errors, done = [], []

    def work(k: int) -> None:
        try:
            for i in range(6):
                code = (k * 7 + i) % 100
                d = pm.spawn(["/bin/sh", "-c", f"exit {code}"], core=(k + i) % 2, timeout=30)
                got = pm.wait(d, timeout=30)
                if got != code:
                    errors.append((k, i, code, got))
                st = pm.status(d, timeout=30)
                if st.id != d.id:
                    errors.append((k, i, "status of another domain", st.id))
            done.append(k)
        except Exception as e:          # noqa: BLE001 -- reported below
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors and sorted(done) == list(range(16))
    assert pm.in_flight == 0


def test_a_callback_that_waits_stalls_no_other_threads_timeout(pm):
    """A callback runs in the thread that takes its answer in; one that
    waits for another answer there reads the ring itself, without holding
    the client's lock: another thread's wait still ends at its timeout (it
    waited for the callback's whole wait, and a kill from it deadlocked)."""
    slow = pm.spawn(["/bin/sleep", "2"], timeout=T)
    stuck = pm.spawn(["/bin/sleep", "60"], timeout=T)
    took = {}

    def other_thread():
        start = time.monotonic()
        try:
            pm.wait(stuck, timeout=0.3)
        except TimeoutError:
            took["wait"] = time.monotonic() - start
        pm.kill(stuck, timeout=T)               # and a kill goes through meanwhile
        took["kill"] = time.monotonic() - start

    t = threading.Thread(target=other_thread)

    def callback(f):
        t.start()                               # while this one waits, as the reader
        took["callback"] = pm.wait(slow, timeout=T)

    fut = pm.spawn_async(["/bin/true"])
    fut.add_done_callback(callback)
    fut.result(timeout=T)                       # this thread reads: the callback runs here
    t.join(T)
    assert took["callback"] == 0 and took["wait"] < 1.5 and took["kill"] < 1.8, took
    assert pm.wait(stuck, timeout=T) == 9


def test_closing_a_client_other_threads_wait_on_answers_them_and_faults_nothing(rt):
    """Threads inside the client's ring (the reader) and on its Condition
    wake with RuntimeGone; the rings are unmapped only after the reader
    left (before, this could fault the whole process)."""
    for _ in range(10):
        pm = rt.client()
        sleeper = pm.spawn(["/bin/sleep", "60"], timeout=T)
        outcomes: list = []

        def waits():
            try:
                pm.wait(sleeper, timeout=T)
                outcomes.append("answered")
            except BaseException as e:          # said by the test, not lost in a thread
                outcomes.append(e)

        threads = [threading.Thread(target=waits) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.05)                        # inside their waits: one reads, three sleep
        start = time.monotonic()
        pm.close()
        for t in threads:
            t.join(T)
        assert not any(t.is_alive() for t in threads)
        assert time.monotonic() - start < 2
        assert len(outcomes) == 4 and all(isinstance(o, procmgr.RuntimeGone) for o in outcomes), \
            outcomes
        assert "closed" in str(outcomes[0])
        with pytest.raises(procmgr.RuntimeGone):
            pm.status(sleeper)
        other = rt.client()
        other.kill(sleeper, timeout=T)
        assert other.wait(sleeper, timeout=T) == 9
