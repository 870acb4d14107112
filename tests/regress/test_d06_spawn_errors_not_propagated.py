"""Defect 6: spawn errors not propagated.

In Barrelfish's C version ``spawn_reply_handler`` answered only when
spawnd succeeded: a failed spawn left its client blocked forever (and the
domain cap leaked).

Here a spawnd's error reaches the client that spawned (with its errno in
``status``), and whoever already held the cap and waited or killed before
the reply gets the same error; the entry is retired (CLEANED), so it takes
no room in the table and is not listed.
"""

from __future__ import annotations

import errno

import pytest

from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, child_cap, outcome, settle, state_of,
)


def test_spawn_error_reaches_the_client(rt, client):
    rt.spawnds[0].fail(Op.SD_SPAWN, Err.EXEC_FAILED, errno.ENOENT)
    with pytest.raises(ProcMgmtError) as info:
        client.spawn(["/no/such/program"], core=0, timeout=TIMEOUT)
    assert info.value.code == Err.EXEC_FAILED
    assert info.value.status == errno.ENOENT
    assert client.domains(timeout=TIMEOUT) == []
    failed = child_cap(rt.spawnds[0])
    assert state_of(client, failed.id) == State.CLEANED
    assert_healthy(rt, client)


def test_spawn_with_caps_error_reaches_the_client(rt, client):
    rt.spawnds[1].fail(Op.SD_SPAWN, Err.EXEC_FAILED, errno.EACCES)
    fut = client.spawn_async(["prog"], core=1, caps=[(3, "r", "/dev/null")])
    assert fut.op == Op.SPAWN_WITH_CAPS
    with pytest.raises(ProcMgmtError) as info:
        client.wait_for(fut, timeout=TIMEOUT)
    assert (info.value.code, info.value.status) == (Err.EXEC_FAILED, errno.EACCES)
    # The next spawn with caps on that core works.
    dom = client.spawn_with_caps(["prog"], [(3, "r", "/dev/null")], core=1, timeout=TIMEOUT)
    assert state_of(client, dom) == State.RUNNING
    assert_healthy(rt, client, core=1)


def test_waiters_and_killers_of_a_failed_spawn_get_its_error(rt, client, other):
    """The child's cap is used (wait, kill) before the failing reply comes:
    everyone is answered with the spawn's error, once."""
    sd = rt.spawnds[0]
    sd.hold = True
    sd.fail(Op.SD_SPAWN, Err.EXEC_FAILED, errno.ENOEXEC)
    spawned = client.spawn_async(["bad"], core=0)
    settle(rt, client)
    cap = child_cap(sd)
    waited = other.wait_async(cap)
    killed = other.kill_async(cap)
    settle(rt, client, other)
    assert not any(f.done() for f in (spawned, waited, killed))
    sd.hold = False
    sd.release()
    settle(rt, client, other)
    assert [outcome(f) for f in (spawned, waited, killed)] == [Err.EXEC_FAILED] * 3
    assert state_of(client, cap) == State.CLEANED
    assert client.domains(timeout=TIMEOUT) == []
    assert [m.op for m in sd.log] == [Op.SD_SPAWN], "a kill was sent for a domain never run"
    assert_healthy(rt, client, other)


def test_failed_spawn_frees_its_table_entry(rt, client):
    rt.manager.table.capacity = 1
    for _ in range(3):
        rt.spawnds[0].fail(Op.SD_SPAWN)
        with pytest.raises(ProcMgmtError) as info:
            client.spawn(["bad"], core=0, timeout=TIMEOUT)
        assert info.value.code == Err.EXEC_FAILED
    assert_healthy(rt, client)
