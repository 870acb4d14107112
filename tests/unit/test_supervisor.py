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
