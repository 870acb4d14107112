"""Defect 17: smaller issues.

- A core id >= MAX_COREID indexed past proc_mgmt's arrays.
- ``pending_spawn`` kept pointers into Flounder's receive buffers after the
  handler returned (the arguments of a queued spawn could change under it).
- ``add_spawnd`` blocked in a nested dispatch; privilege came only from the
  channel, and the non-monitor version silently did nothing (NOT_MONITOR
  existed only in a comment); a second spawnd for a core was only logged.

Here: a core the manager has no spawnd for, however large, is
INVALID_SPAWND; the arguments are copied when the request is taken, so the
spawnd (and a later span) sees exactly what the client sent; add_spawnd is
answered at once -- NOT_MONITOR from a client that is not the monitor,
SPAWND_EXISTS for a core that has one -- and changes nothing when refused.
"""

from __future__ import annotations


import pytest

from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.protocol import LONG_ARG_LIMIT, Op, SpawnArgs
from regress_helpers import (
    SHM_PREFIX, TIMEOUT, assert_healthy, error_of, outcome, settle, spawn_log, state_of,
)
from ringbuf import Ring, unique_name


@pytest.fixture
def spare_rings():
    """A request and a reply ring nobody serves, as a monitor would name them."""
    rings = [Ring.create(unique_name(SHM_PREFIX), 64) for _ in range(2)]
    yield rings[0].name, rings[1].name
    for r in rings:
        r.close()
        r.unlink()


# ---- core ids ---------------------------------------------------------------


@pytest.mark.parametrize("core", [2, 1023, 1024, 4096, 0xFFFF])
def test_core_without_spawnd_is_invalid(rt, client, core):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    assert error_of(client.spawn, ["b"], core=core) == Err.INVALID_SPAWND
    assert error_of(client.span, dom, core) == Err.INVALID_SPAWND
    assert client.status(dom, timeout=TIMEOUT).cores == [0]
    assert client.domains(timeout=TIMEOUT) == [dom.id]
    assert_healthy(rt, client)


def test_add_spawnd_for_core_out_of_range(rt, client, spare_rings):
    with pytest.raises(ProcMgmtError) as info:
        rt.monitor.add_spawnd(rt.manager.max_cores, *spare_rings, timeout=TIMEOUT)
    assert info.value.code == Err.INVALID_SPAWND
    assert error_of(client.spawn, ["a"], core=rt.manager.max_cores) == Err.INVALID_SPAWND
    assert_healthy(rt, client)


@pytest.mark.parametrize("core", [0x10000, -1])
def test_core_id_beyond_the_wire_format(rt, client, core):
    """Refused by the client before anything is sent, saying the range."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    with pytest.raises(ValueError, match=f"core {core} is out of range"):
        client.spawn(["b"], core=core, timeout=TIMEOUT)
    with pytest.raises(ValueError, match=f"core {core} is out of range"):
        client.span(dom, core, timeout=TIMEOUT)
    assert client.in_flight == 0
    assert_healthy(rt, client)


# ---- argument buffers -------------------------------------------------------


def test_arguments_are_copied(rt, client, other):
    argv = ["prog", "one", "two"]
    env = {"A": "1", "B": "x=y"}
    sd0 = rt.spawnds[0]
    sd0.hold = True
    fut = client.spawn_async(argv, core=0, env=env)
    argv[1] = "CHANGED"
    argv.append("extra")
    env["A"] = "CHANGED"
    # Other spawns with other arguments go through while the first waits.
    others = [other.spawn_async([f"other{i}", "z" * 300], core=0) for i in range(3)]
    settle(rt, client, other)
    sd0.hold = False
    sd0.release()
    settle(rt, client, other)
    dom = outcome(fut)
    sent = SpawnArgs.decode(spawn_log(sd0)[0].payload)
    assert (sent.path, sent.argv, sent.env) == ("prog", ["prog", "one", "two"],
                                                 {"A": "1", "B": "x=y"})
    assert client.status(dom, timeout=TIMEOUT).argv == ["prog", "one", "two"]
    for i, f in enumerate(others):
        assert other.status(outcome(f), timeout=TIMEOUT).argv == [f"other{i}", "z" * 300]
    # A span later starts the same program with the same arguments.
    client.span(dom, 1, timeout=TIMEOUT)
    span = [m for m in rt.spawnds[1].log if m.op == Op.SD_SPAN][0]
    assert SpawnArgs.decode(span.payload) == sent
    assert_healthy(rt, client, other)


def test_long_arguments_survive_fragmentation(rt, client):
    """Arguments near the 2048-byte limits travel in many continuation
    slots; they arrive whole and stay whole for the span."""
    argv = ["p"] + [f"{i:04d}" * 40 for i in range(12)]   # ~1.9 KB
    env = {f"K{i}": "v" * 150 for i in range(12)}
    dom = client.spawn(argv, core=0, env=env, timeout=TIMEOUT)
    sent = SpawnArgs.decode(spawn_log(rt.spawnds[0])[-1].payload)
    assert (sent.argv, sent.env) == (argv, env)
    assert client.status(dom, timeout=TIMEOUT).argv == argv
    client.span(dom, 1, timeout=TIMEOUT)
    span = [m for m in rt.spawnds[1].log if m.op == Op.SD_SPAN][0]
    assert SpawnArgs.decode(span.payload).argv == argv
    with pytest.raises(ProcMgmtError) as info:
        client.spawn(["p", "x" * LONG_ARG_LIMIT], core=0, timeout=TIMEOUT)
    assert info.value.code == Err.ARG_TOO_LONG
    assert_healthy(rt, client)


# ---- add_spawnd -------------------------------------------------------------


def test_add_spawnd_from_a_client_is_not_monitor(rt, client, spare_rings):
    assert error_of(client.add_spawnd, 5, *spare_rings) == Err.NOT_MONITOR
    assert error_of(client.add_spawnd, 0, *spare_rings) == Err.NOT_MONITOR
    assert 5 not in rt.manager.spawnds
    assert error_of(client.spawn, ["a"], core=5) == Err.INVALID_SPAWND
    assert_healthy(rt, client)


def test_add_spawnd_for_an_existing_core(rt, client, spare_rings):
    dom = client.spawn(["a"], core=1, timeout=TIMEOUT)
    with pytest.raises(ProcMgmtError) as info:
        rt.monitor.add_spawnd(1, *spare_rings, timeout=TIMEOUT)
    assert info.value.code == Err.SPAWND_EXISTS
    # The spawnd registered first still serves the core.
    again = client.spawn(["b"], core=1, timeout=TIMEOUT)
    assert spawn_log(rt.spawnds[1])[-1].dom == again.id
    assert state_of(client, again) == State.RUNNING
    client.kill(dom, timeout=TIMEOUT)
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert_healthy(rt, client, core=1)


def test_add_spawnd_with_bad_rings(rt, client):
    with pytest.raises(ProcMgmtError) as info:
        rt.monitor.add_spawnd(6, "/procmgr-test-regress-no-such-ring", "/nor-this",
                              timeout=TIMEOUT)
    assert info.value.code == Err.INVALID_SPAWND
    assert error_of(client.spawn, ["a"], core=6) == Err.INVALID_SPAWND
    assert_healthy(rt, client)


def test_add_spawnd_does_not_block_requests_in_flight(rt, client):
    """Registering a spawnd is answered at once, while a spawn on another
    core is still waiting for its reply (no nested dispatch)."""
    sd0 = rt.spawnds[0]
    sd0.hold = True
    fut = client.spawn_async(["a"], core=0)
    settle(rt, client)
    rt.add_spawnd(2)
    assert not fut.done()
    on2 = client.spawn(["b"], core=2, timeout=TIMEOUT)
    assert state_of(client, on2) == State.RUNNING
    sd0.hold = False
    sd0.release()
    settle(rt, client)
    assert state_of(client, outcome(fut)) == State.RUNNING
    assert_healthy(rt, client, core=2)
