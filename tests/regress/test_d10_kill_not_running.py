"""Defect 10: kill or exit of a domain that is not running.

Barrelfish checked no state: a kill or exit of a stopped domain overwrote
the real exit code, dropped the state back to STOP_PEND and resent the
kills, whose replies tripped the ``running``/STOPPED asserts (without
asserts, the uint8 counter underflowed and the killer hung).

Here a kill or exit of a STOPPED or CLEANED domain is DOMAIN_NOT_RUNNING,
answered at once; the recorded exit status and the state are kept and no
request is sent to any spawnd.
"""

from __future__ import annotations

from procmgr.protocol import State
from procmgr.errors import Err
from regress_helpers import (
    TIMEOUT, assert_healthy, error_of, outcome, settle,
)


def _logs(rt):
    return [len(sd.log) for sd in rt.spawnds.values()]


def test_kill_and_exit_of_a_cleaned_domain(rt, client, other):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    client.span(dom, 1, timeout=TIMEOUT)
    client.exit(dom, 3, timeout=TIMEOUT)
    assert client.wait(dom, timeout=TIMEOUT) == 3
    before = _logs(rt)
    for _ in range(2):
        assert error_of(other.kill, dom) == Err.DOMAIN_NOT_RUNNING
        assert error_of(other.exit, dom, 7) == Err.DOMAIN_NOT_RUNNING
    assert _logs(rt) == before, "requests sent for a domain that is not running"
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status) == (State.CLEANED, 3)
    assert client.wait(dom, timeout=TIMEOUT) == 3
    assert_healthy(rt, client, other)


def test_kill_and_exit_of_a_stopped_domain(rt, client):
    """Cleanup held back: the domain is STOPPED; kill and exit are refused,
    and the cleanup still completes with the original status."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    sd.hold = True
    kill = client.kill_async(dom)
    settle(rt, client)
    sd.release(1)                      # the kill reply: STOPPED, cleanup sent
    settle(rt, client)
    assert outcome(kill) is None
    assert client.status(dom, timeout=TIMEOUT).state == State.STOPPED
    before = _logs(rt)
    late = [client.kill_async(dom), client.exit_async(dom, 0), client.kill_async(dom)]
    settle(rt, client)
    assert [outcome(f) for f in late] == [Err.DOMAIN_NOT_RUNNING] * 3
    assert _logs(rt) == before
    sd.hold = False
    sd.release()
    settle(rt, client)
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status) == (State.CLEANED, 9)
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert_healthy(rt, client)


def test_exit_after_a_dispatcher_ended_by_itself(rt, client):
    """The dispatcher's own end (reported by its spawnd) stopped the domain
    with its real code; a late exit call or kill does not overwrite it."""
    dom = client.spawn(["a"], core=1, timeout=TIMEOUT)
    rt.spawnds[1].exit(dom.id, 42)
    settle(rt, client)
    assert client.wait(dom, timeout=TIMEOUT) == 42
    assert error_of(client.exit, dom, 0) == Err.DOMAIN_NOT_RUNNING
    assert error_of(client.kill, dom) == Err.DOMAIN_NOT_RUNNING
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status, info.signaled) == (State.CLEANED, 42, False)
    assert_healthy(rt, client)


def test_killed_by_signal_status_kept(rt, client):
    """A dispatcher killed by a signal nobody asked for reports -N; a late
    kill does not turn it into 9."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    rt.spawnds[0].exit(dom.id, 11, signal=True)
    settle(rt, client)
    assert client.wait(dom, timeout=TIMEOUT) == -11
    assert error_of(client.kill, dom) == Err.DOMAIN_NOT_RUNNING
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.exit_status, info.signaled) == (11, True)
    assert client.wait(dom, timeout=TIMEOUT) == -11
    assert_healthy(rt, client)
