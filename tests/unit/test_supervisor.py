"""The supervisor's policy under the simulated spawnd, every end scripted:
restarts, intensity, backoff voided by a stop, a spawn that fails
(procmgr/manager/supervisor.py)."""

import time

import pytest

from procmgr.errors import Err
from procmgr.protocol import Op
from procmgr.testing.inprocess import InProcessRuntime


@pytest.fixture
def rt():
    with InProcessRuntime(cores=1, prefix="procmgr-test", releases=True) as rt:
        yield rt


def running(pm, name):
    info = pm.program(name, timeout=5)
    assert info.state == "RUNNING", info
    return info


def end(rt, pm, name, status=1):
    """The incarnation running now exits with ``status``."""
    info = running(pm, name)
    rt.spawnds[0].exit(info.domain.id, status)
    rt.pump()
    return info


def test_each_end_is_seen_once_and_the_intensity_gives_up(rt):
    pm = rt.client()
    pm.supervise(["prog"], name="p", backoff=0, max_restarts=3, period=60, timeout=5)
    ids = [end(rt, pm, "p").domain.id for _ in range(4)]
    info = pm.program("p", timeout=5)
    assert info.state == "FATAL" and info.restarts == 3
    assert len(set(ids)) == 4 and [h["domain"] for h in info.history] == ids
    assert len(rt.spawnds[0].dispatchers) == 0            # nothing left running


def test_ends_spread_wider_than_the_period_never_give_up(rt):
    pm = rt.client()
    pm.supervise(["prog"], name="p", backoff=0, max_restarts=2, period=0.05, timeout=5)
    for _ in range(5):
        end(rt, pm, "p")
        time.sleep(0.06)
    assert running(pm, "p").restarts == 5


def test_a_stop_in_backoff_voids_the_restart(rt):
    pm = rt.client()
    pm.supervise(["prog"], name="p", backoff=0.2, jitter=0, timeout=5)
    end(rt, pm, "p")
    assert pm.program("p", timeout=5).state == "BACKOFF"
    assert pm.stop_program("p", timeout=5).state == "STOPPED"
    time.sleep(0.25)
    rt.pump()
    assert pm.program("p", timeout=5).state == "STOPPED"
    assert not rt.spawnds[0].dispatchers


def test_a_long_lived_incarnation_starts_the_delay_over(rt):
    """reset_after: after one that stayed up, the delay is the first again."""
    pm = rt.client()
    pm.supervise(["prog"], name="p", backoff=0.05, backoff_factor=10, jitter=0,
                 reset_after=0.1, timeout=5)

    def delay_after_an_end() -> float:
        end(rt, pm, "p")
        t = time.monotonic()
        while pm.program("p", timeout=5).state != "RUNNING":
            assert time.monotonic() - t < 5
            time.sleep(0.005)
        return time.monotonic() - t

    first, second = delay_after_an_end(), delay_after_an_end()   # quick ends: 0.05, 0.5
    time.sleep(0.15)                         # this one stays up past reset_after
    again = delay_after_an_end()
    assert first < 0.3 and second > 0.45 and again < 0.3, (first, second, again)


def test_a_spawn_that_fails_is_a_failure_in_words(rt):
    pm = rt.client()
    rt.spawnds[0].fail(Op.SD_SPAWN, Err.EXEC_FAILED)
    pm.supervise(["prog"], name="p", backoff=0, max_restarts=0, timeout=5)
    rt.pump()
    info = pm.program("p", timeout=5)
    assert info.state == "FATAL" and "EXEC_FAILED" in info.error


def test_the_delay_is_capped_however_many_quick_ends():
    """2.0 ** 1025 overflows a float: the cap is reached before the power."""
    from procmgr.protocol.programs import Policy

    policy = Policy(backoff=0.1, backoff_factor=2, backoff_max=30, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3)] == [0.1, 0.2, pytest.approx(0.4)]
    assert policy.delay(5000) == 30 and Policy(backoff=0).delay(5000) == 0


def test_an_answer_always_fits_and_is_json(rt):
    """A view longer than an answer is shown shorter, never cut mid-JSON."""
    pm = rt.client()
    pm.supervise(["prog"] + ["\u00e9" * 200] * 14, name="wide", timeout=5)
    info = pm.program("wide", timeout=5)
    assert info.name == "wide" and 1 <= len(info.argv) < 15
    with pytest.raises(ValueError, match="printable"):
        pm.supervise(["prog"], name="bad\x1bname")


def test_requests_raise_what_follows_a_stop_never_lower_it(rt):
    """A start during a stop starts it once the stop is over; a stop after
    a remove does not keep the program."""
    pm = rt.client()
    pm.supervise(["prog"], name="p", timeout=5)
    stop = pm.stop_program_async("p")
    start = pm._program_request({"do": "start", "name": "p"})
    rt.pump()
    assert stop.result(5).state in ("STOPPED", "STARTING")
    assert start.result(5).state in ("STARTING", "RUNNING")
    assert pm.program("p", timeout=5).state == "RUNNING"
    remove = pm._program_request({"do": "remove", "name": "p"})
    stop = pm.stop_program_async("p")
    rt.pump()
    remove.result(5), stop.result(5)
    assert pm.programs(timeout=5) == []


def test_what_a_client_that_left_waited_on_is_forgotten(rt):
    pm, leaver = rt.client(), rt.client()
    pm.supervise(["prog"], name="p", timeout=5)
    for _ in range(50):
        leaver.wait_program_async("p")
    rt.pump()
    program = rt.manager.supervisor.programs["p"]
    assert len(program.settled_waiters) == 50
    leaver.requests.close()
    rt.pump()
    assert program.settled_waiters == []


def test_waiters_on_one_program_are_bounded(rt):
    from procmgr.errors import ProcMgmtError
    from procmgr.manager.supervisor import WAITERS_MAX

    pm = rt.client()
    pm.supervise(["prog"], name="p", timeout=5)
    futures = [pm.wait_program_async("p") for _ in range(WAITERS_MAX + 1)]
    rt.pump()
    with pytest.raises(ProcMgmtError) as e:
        futures[-1].result(5)
    assert e.value.code == Err.BUSY and f"{WAITERS_MAX} requests wait" in str(e.value)
    assert not futures[0].done()


def test_listing_pages_through_many_programs(rt):
    pm = rt.client()
    names = [f"p{i:04d}-" + "x" * 60 for i in range(300)]
    for name in reversed(names):
        pm.supervise_async(["prog"], name=name, autostart=False)
    rt.pump()
    assert [p["name"] for p in pm.programs(timeout=5)] == names
