"""What every regression test of tests/regress shares.

The tests drive the whole control plane in one process
(``procmgr.testing.inprocess.InProcessRuntime``: the manager, simulated spawnds and
clients on real shared-memory rings, moved on by ``rt.pump()``), so every
interleaving they need is scripted, not hoped for. Nothing here blocks:
a request whose answer must not have come yet is checked with
``fut.done()`` after ``settle``; one that must come is waited for with a
bound (``TIMEOUT``).

The checks are the client's view: each request answered exactly once (a
``Future`` done with the right result or ``ProcMgmtError`` code, and no
answer the client did not ask for), exit statuses and states as
``client.status`` reports them, and a manager that still serves a fresh
spawn/kill/wait afterwards (``assert_healthy``).
"""

from __future__ import annotations

import os

import pytest

from procmgr.client.client import Client, Domain, Future
from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.protocol import Msg, Op

TIMEOUT = 5.0
PENDING = ("replyq", "hashtable")
# Every segment these tests create starts with this (tests/conftest.py checks
# "procmgr*" at the end of the run; this is checked after every test).
SHM_PREFIX = "procmgr-test-regress"


def shm_leftovers() -> list[str]:
    """Segments this process made and left (ringbuf.unique_name adds the pid,
    so a concurrent run elsewhere does not count)."""
    mine = f"{SHM_PREFIX}-{os.getpid()}-"
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(mine))


def settle(rt, *clients: Client) -> None:
    """Let the control plane run until idle, and let clients take their answers."""
    rt.pump()
    for c in clients:
        c.poll()


def outcome(fut: Future):
    """What an answered request came to: its result, or the Err it failed with."""
    assert fut.done(), f"request {fut.seq} (op {fut.op}) has not been answered"
    try:
        return fut.result()
    except ProcMgmtError as e:
        return e.code


def error_of(call, *args, **kw) -> Err:
    """Run a blocking client call that must fail; the error code it failed with."""
    with pytest.raises(ProcMgmtError) as info:
        call(*args, timeout=TIMEOUT, **kw)
    return info.value.code


def state_of(client: Client, dom) -> State:
    return client.status(dom, timeout=TIMEOUT).state


def spawn_log(sd, op: Op = Op.SD_SPAWN) -> list[Msg]:
    """The requests of ``op`` a simulated spawnd received, in order."""
    return [m for m in sd.log if m.op == op]


def requests_for(sd, dom_id: int, op: Op) -> int:
    """How many ``op`` requests for domain ``dom_id`` the spawnd received."""
    return sum(1 for m in sd.log if m.op == op and m.dom == dom_id)


def child_cap(sd) -> Domain:
    """The cap of the domain the spawnd was last asked to start.

    The spawnd hands it to the child, so the child (and whoever it tells)
    can use it before the spawn reply has reached the manager: the race of
    Barrelfish defect 15.
    """
    msg = spawn_log(sd)[-1]
    return Domain(msg.dom, msg.nonce, sd.core)


def assert_all_answered(rt, *clients: Client) -> None:
    """Every request of ``clients`` answered, none twice; the manager owes nothing."""
    settle(rt, *clients)
    for c in clients:
        assert c.in_flight == 0, f"{c.in_flight} requests unanswered"
        # An answer to a request already answered, or never made, is counted
        # by the client (it would drop it otherwise).
        assert c.unmatched_answers == 0, (
            f"{c.unmatched_answers} answers to requests already answered or never made")
    for binding in rt.manager.clients.values():
        assert not binding.outstanding, f"{binding} still owed {sorted(binding.outstanding)}"


def assert_healthy(rt, *clients: Client, core: int = 0) -> None:
    """No request lost or answered twice, and the manager still works:
    a fresh domain on ``core`` is spawned, runs, is killed and reports 9."""
    assert_all_answered(rt, *clients)
    probe = rt.client()
    dom = probe.spawn(["probe"], core=core, timeout=TIMEOUT)
    assert state_of(probe, dom) == State.RUNNING
    probe.kill(dom, timeout=TIMEOUT)
    assert probe.wait(dom, timeout=TIMEOUT) == 9
    assert state_of(probe, dom) == State.CLEANED
    assert_all_answered(rt, probe, *clients)
