"""Defect 11: concurrent killers, or a kill racing an exit.

In Barrelfish a second kill (or a kill racing the domain's own exit) sent
the kill requests again; the extra replies tripped the ``running > 0`` /
``status != STOPPED`` asserts and proc_mgmt aborted.

Here a kill of a domain already stopping joins the others: each core gets
one kill request, every killer is answered OK once when the domain stops,
and a core's stop counts once however many messages report it (a kill
reply and the dispatcher's own exit). The status is the first stop's:
9 if the kill came first, the exit code if the exit did.
"""

from __future__ import annotations

from procmgr.protocol import State
from procmgr.errors import Err
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, outcome, requests_for, settle, state_of,
)


def _spanned(rt, client):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    client.span(dom, 1, timeout=TIMEOUT)
    return dom


def test_concurrent_killers(rt, client, other):
    third = rt.client()
    dom = _spanned(rt, client)
    for sd in rt.spawnds.values():
        sd.hold = True
    kills = [c.kill_async(dom) for c in (client, other, third, client)]
    waits = [c.wait_async(dom) for c in (client, other, third)]
    settle(rt, client, other, third)
    assert not any(f.done() for f in kills + waits)
    assert state_of(client, dom) == State.STOP_PEND
    for sd in rt.spawnds.values():
        sd.hold = False
        sd.release()
    settle(rt, client, other, third)
    assert [outcome(f) for f in kills] == [None] * 4
    assert [outcome(f) for f in waits] == [9] * 3
    for core in (0, 1):
        assert requests_for(rt.spawnds[core], dom.id, Op.SD_KILL) == 1
        assert requests_for(rt.spawnds[core], dom.id, Op.SD_CLEANUP) == 1
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status) == (State.CLEANED, 9)
    assert_healthy(rt, client, other, third)


def test_killer_joins_half_way(rt, client, other):
    """The second kill arrives after one core has answered the first."""
    dom = _spanned(rt, client)
    sd1 = rt.spawnds[1]
    sd1.hold = True
    first = client.kill_async(dom)
    settle(rt, client)
    assert rt.spawnds[0].dispatchers.get(dom.id) is None   # core 0 done
    second = other.kill_async(dom)
    settle(rt, client, other)
    assert not first.done() and not second.done()
    sd1.hold = False
    sd1.release()
    settle(rt, client, other)
    assert outcome(first) is None and outcome(second) is None
    assert requests_for(sd1, dom.id, Op.SD_KILL) == 1
    assert requests_for(rt.spawnds[0], dom.id, Op.SD_KILL) == 1
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert_healthy(rt, client, other)


def test_kill_then_dispatcher_exits_by_itself(rt, client):
    """The kill is on its way when the dispatcher ends by itself: the
    spawnd reports the exit, then answers the kill NOT_FOUND. The core is
    counted once, the killer answered once, and the kill's 9 stands."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    kill = client.kill_async(dom)
    rt.run_manager()                      # kill handled and sent; spawnd not run
    assert requests_for(sd, dom.id, Op.SD_KILL) == 0
    sd.exit(dom.id, 5)
    settle(rt, client)
    assert outcome(kill) is None
    assert requests_for(sd, dom.id, Op.SD_KILL) == 1
    assert requests_for(sd, dom.id, Op.SD_CLEANUP) == 1
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.exit_status) == (State.CLEANED, 9)
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert_healthy(rt, client)


def test_dispatcher_exit_then_kill(rt, client):
    """The exit report is handled first: the domain is stopped with its own
    code, and the kill that follows is refused, not resent."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    sd.exit(dom.id, 5)
    kill = client.kill_async(dom)
    settle(rt, client)
    assert outcome(kill) == Err.DOMAIN_NOT_RUNNING
    assert requests_for(sd, dom.id, Op.SD_KILL) == 0
    assert client.wait(dom, timeout=TIMEOUT) == 5
    assert state_of(client, dom) == State.CLEANED
    assert_healthy(rt, client)


def test_home_exit_of_spanned_domain_then_kill(rt, client, other):
    """The home dispatcher exits by itself; the spanned one is being
    stopped when the kill arrives: the killer waits for it, gets OK, and
    the exit code stands."""
    dom = _spanned(rt, client)
    sd1 = rt.spawnds[1]
    sd1.hold = True
    rt.spawnds[0].exit(dom.id, 6)
    settle(rt, client)
    assert state_of(client, dom) == State.STOP_PEND
    kill = other.kill_async(dom)
    settle(rt, client, other)
    assert not kill.done()
    sd1.hold = False
    sd1.release()
    settle(rt, client, other)
    assert outcome(kill) is None
    assert requests_for(sd1, dom.id, Op.SD_KILL) == 1
    assert client.wait(dom, timeout=TIMEOUT) == 6
    assert_healthy(rt, client, other)


def test_exit_call_then_kill(rt, client, other):
    """The domain calls exit(4) (answered at once) and a kill follows while
    its dispatchers are being stopped: the kill is answered OK, status 4."""
    dom = _spanned(rt, client)
    for sd in rt.spawnds.values():
        sd.hold = True
    ex = client.exit_async(dom, 4)
    kill = other.kill_async(dom)
    settle(rt, client, other)
    assert outcome(ex) is None
    assert not kill.done()
    for sd in rt.spawnds.values():
        sd.hold = False
        sd.release()
    settle(rt, client, other)
    assert outcome(kill) is None
    assert client.wait(dom, timeout=TIMEOUT) == 4
    for core in (0, 1):
        assert requests_for(rt.spawnds[core], dom.id, Op.SD_KILL) == 1
    assert_healthy(rt, client, other)


def test_kill_then_exit_call(rt, client, other):
    """The kill came first: the domain's exit call while it is being killed
    is answered (DOMAIN_NOT_RUNNING: it is already stopping) and does not
    change the status."""
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd = rt.spawnds[0]
    sd.hold = True
    kill = other.kill_async(dom)
    settle(rt, other)
    ex = client.exit_async(dom, 4)
    settle(rt, client, other)
    assert outcome(ex) == Err.DOMAIN_NOT_RUNNING
    sd.hold = False
    sd.release()
    settle(rt, client, other)
    assert outcome(kill) is None
    assert client.wait(dom, timeout=TIMEOUT) == 9
    assert requests_for(sd, dom.id, Op.SD_KILL) == 1
    assert_healthy(rt, client, other)
