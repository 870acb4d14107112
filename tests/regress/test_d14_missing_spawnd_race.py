"""Defect 14: missing-spawnd race.

A spawn for a core whose spawnd has not registered yet: C failed it with
INVALID_SPAWND, 52ba38566 spun a nested event loop until the spawnd
appeared (forever if it never did), f77d1f2c3 restored the error.

Here such a spawn (or span) is answered INVALID_SPAWND at once -- nothing
blocks, other requests go on -- and works once the monitor has added the
spawnd. A core whose worker died is missing too, and can be given a new
one.
"""

from __future__ import annotations

from procmgr.protocol import State
from procmgr.errors import Err
from regress_helpers import (
    TIMEOUT, assert_healthy, error_of, outcome, settle, state_of,
)


def test_spawn_before_add_spawnd_fails_at_once(make_rt):
    rt = make_rt(cores=1)
    c = rt.client()
    dom = c.spawn(["home"], core=0, timeout=TIMEOUT)
    sd0 = rt.spawnds[0]
    sd0.hold = True
    busy = c.spawn_async(["busy"], core=0)       # in flight meanwhile
    missing = [c.spawn_async(["x"], core=3), c.span_async(dom, 3)]
    settle(rt, c)
    assert [outcome(f) for f in missing] == [Err.INVALID_SPAWND] * 2
    assert not busy.done()
    sd0.hold = False
    sd0.release()
    settle(rt, c)
    assert state_of(c, outcome(busy)) == State.RUNNING
    # The monitor adds core 3's spawnd: now both work.
    rt.add_spawnd(3)
    late = c.spawn(["x"], core=3, timeout=TIMEOUT)
    assert state_of(c, late) == State.RUNNING
    assert c.span(dom, 3, timeout=TIMEOUT) > 0
    assert c.status(dom, timeout=TIMEOUT).cores == [0, 3]
    c.kill(dom, timeout=TIMEOUT)
    assert c.wait(dom, timeout=TIMEOUT) == 9
    assert_healthy(rt, c, core=3)


def test_spawn_to_a_core_whose_worker_died(rt, client):
    dom = client.spawn(["a"], core=1, timeout=TIMEOUT)
    # The runtime calls spawnd_died when a worker's pidfd fires.
    rt.spawnds.pop(1)
    rt.manager.spawnd_died(1)
    settle(rt, client)
    # Its domain died with it (SIGKILL from the worker's death).
    assert client.wait(dom, timeout=TIMEOUT) == -9
    assert state_of(client, dom) == State.CLEANED
    assert error_of(client.spawn, ["b"], core=1) == Err.INVALID_SPAWND
    home = client.spawn(["c"], core=0, timeout=TIMEOUT)
    assert error_of(client.span, home, 1) == Err.INVALID_SPAWND
    # A new worker takes the core.
    rt.add_spawnd(1)
    assert state_of(client, client.spawn(["d"], core=1, timeout=TIMEOUT)) == State.RUNNING
    assert client.span(home, 1, timeout=TIMEOUT) > 0
    assert_healthy(rt, client, core=1)
