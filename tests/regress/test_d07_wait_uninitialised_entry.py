"""Defect 7: wait uses an uninitialised entry.

On a failed lookup Barrelfish's ``wait_handler`` answered with an exit
status read through a pointer never set; H's ``get_status`` answered an
unknown id twice (or went on with garbage), and crashed on an empty table.

Here a cap that names no domain is DOMAIN_TABLE_FIND, a cap with the
wrong nonce (forged or stale) is BAD_CAP, an unknown id in get_status is
DOMAIN_TABLE_FIND -- each answered exactly once, before or after the first
spawn, and the domain the forged cap aimed at is untouched.
"""

from __future__ import annotations

import pytest

from procmgr.client.client import Domain
from procmgr.protocol import State
from procmgr.errors import Err
from regress_helpers import (
    TIMEOUT, assert_all_answered, assert_healthy, error_of, outcome,
    settle, state_of,
)

UNKNOWN = [Domain(0, 0), Domain(7, 0x1234), Domain(0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)]


def _every_lookup(client, cap):
    """One of each request that looks a cap up, sent together."""
    return {
        "wait": client.wait_async(cap),
        "wait nohang": client.wait_async(cap, nohang=True),
        "kill": client.kill_async(cap),
        "span": client.span_async(cap, 1),
        "exit": client.exit_async(cap, 3),
    }


@pytest.mark.parametrize("cap", UNKNOWN, ids=["id0", "id7", "idmax"])
def test_unknown_cap_on_empty_table(rt, client, cap):
    futs = _every_lookup(client, cap)
    settle(rt, client)
    assert {k: outcome(f) for k, f in futs.items()} == dict.fromkeys(futs, Err.DOMAIN_TABLE_FIND)
    assert error_of(client.status, cap.id) == Err.DOMAIN_TABLE_FIND
    assert client.domains(timeout=TIMEOUT) == []
    assert rt.spawnds[0].log == [] and rt.spawnds[1].log == []
    assert_healthy(rt, client)


def test_unknown_cap_after_spawns(rt, client):
    doms = [client.spawn([f"d{i}"], core=0, timeout=TIMEOUT) for i in range(3)]
    missing = Domain(max(d.id for d in doms) + 5, doms[0].nonce)
    futs = _every_lookup(client, missing)
    settle(rt, client)
    assert {k: outcome(f) for k, f in futs.items()} == dict.fromkeys(futs, Err.DOMAIN_TABLE_FIND)
    assert error_of(client.status, missing.id) == Err.DOMAIN_TABLE_FIND
    for d in doms:
        assert state_of(client, d) == State.RUNNING
    assert_healthy(rt, client)


def test_forged_cap_is_bad_cap_and_harms_nothing(rt, client, other):
    dom = client.spawn(["victim"], core=0, timeout=TIMEOUT)
    forged = Domain(dom.id, dom.nonce ^ 1)
    futs = _every_lookup(other, forged)
    settle(rt, client, other)
    assert {k: outcome(f) for k, f in futs.items()} == dict.fromkeys(futs, Err.BAD_CAP)
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status, info.cores) == (State.RUNNING, None, [0])
    assert len(rt.spawnds[0].log) == 1 and rt.spawnds[1].log == []
    # The real cap still works, and the forged one still fails after the stop.
    client.kill(dom, timeout=TIMEOUT)
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert error_of(other.wait, forged) == Err.BAD_CAP
    assert_healthy(rt, client, other)


def test_get_status_of_unknown_id_answered_once(rt, client):
    """H answered an unknown id twice; a second answer would show up as a
    stray, and the manager's own accounting would raise."""
    for ident in (0, 1, 99, 0xFFFFFFFF):
        assert error_of(client.status, ident) == Err.DOMAIN_TABLE_FIND
    assert_all_answered(rt, client)
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    assert client.status(dom.id, timeout=TIMEOUT).argv == ["a"]
    assert error_of(client.status, dom.id + 1) == Err.DOMAIN_TABLE_FIND
    assert_healthy(rt, client)
