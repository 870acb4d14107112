"""A worker that releases a domain as its dispatcher stops (Flag.RELEASED on
the kill reply or the exit report, as our real worker does) is sent no
SD_CLEANUP, and the domain is CLEANED as soon as it has stopped; a core
whose spawnd holds the domain until told still gets its cleanup, and the
domain is cleaned only once that is answered."""

import pytest

from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.testing.inprocess import InProcessRuntime
from procmgr.protocol import Op

T = 5.0


def _requests(sd, op, dom_id) -> int:
    return sum(1 for m in sd.log if m.op == op and m.dom == dom_id)


@pytest.fixture
def rt():
    with InProcessRuntime(cores=2, prefix="procmgr-test", releases=True) as rt:
        yield rt


def test_kill_on_releasing_core_needs_no_cleanup(rt):
    client = rt.client()
    dom = client.spawn(["prog"], core=0, timeout=T)
    client.kill(dom, timeout=T)
    assert client.wait(dom, timeout=T) == 9
    assert client.status(dom, timeout=T).state == State.CLEANED
    assert _requests(rt.spawnds[0], Op.SD_CLEANUP, dom.id) == 0
    assert dom.id in rt.spawnds[0].cleaned
    assert len(rt.manager.table) == 0


def test_exit_on_releasing_core_needs_no_cleanup(rt):
    client = rt.client()
    dom = client.spawn(["prog"], core=1, timeout=T)
    rt.spawnds[1].exit(dom.id, 3)
    assert client.wait(dom, timeout=T) == 3
    assert client.status(dom, timeout=T).state == State.CLEANED
    assert _requests(rt.spawnds[1], Op.SD_CLEANUP, dom.id) == 0


def test_holding_core_still_gets_its_cleanup(rt):
    """Spanned over a releasing core and a holding one: only the holder is
    sent SD_CLEANUP, and the domain stays STOPPED until it answers."""
    releasing, holding = rt.spawnds[0], rt.spawnds[1]
    holding.releases = False
    client = rt.client()
    dom = client.spawn(["prog"], core=0, timeout=T)
    client.span(dom, 1, timeout=T)
    holding.hold = True                      # its kill and cleanup replies wait
    kill = client.kill_async(dom)
    rt.pump()
    holding.hold = False
    holding.release()                        # the kill reply: STOPPED, cleanup sent
    holding.hold = True
    rt.pump()
    client.wait_for(kill, timeout=T)
    assert client.status(dom, timeout=T).state == State.STOPPED
    holding.hold = False
    holding.release()                        # the cleanup reply
    rt.pump()
    assert client.status(dom, timeout=T).state == State.CLEANED
    assert _requests(releasing, Op.SD_CLEANUP, dom.id) == 0
    assert _requests(holding, Op.SD_CLEANUP, dom.id) == 1


def test_kill_racing_exit_counts_the_core_once(rt):
    """The exit report (released) overtakes the kill's reply (NOT_FOUND)."""
    client = rt.client()
    dom = client.spawn(["prog"], core=0, timeout=T)
    sd = rt.spawnds[0]
    kill = client.kill_async(dom)
    rt.run_manager()                          # SD_KILL is in the worker's ring...
    sd.exit(dom.id, 0)                        # ...when the dispatcher ends by itself
    rt.pump()                                 # exit report first, then NOT_FOUND
    assert _requests(sd, Op.SD_KILL, dom.id) == 1
    client.wait_for(kill, timeout=T)
    assert client.wait(dom, timeout=T) == 9   # the kill came first: killed
    assert client.status(dom, timeout=T).state == State.CLEANED
    assert _requests(sd, Op.SD_CLEANUP, dom.id) == 0
    assert rt.manager.protocol_errors == 0 and rt.manager.internal_errors == 0


def test_no_span_again_to_a_core_whose_dispatcher_ended(rt):
    """A spanned dispatcher that exits releases its core; the domain still
    ran there, and a second span there is ALREADY_SPANNED, as before."""
    client = rt.client()
    dom = client.spawn(["prog"], core=0, timeout=T)
    client.span(dom, 1, timeout=T)
    rt.spawnds[1].exit(dom.id, 0)             # the spanned one ends; home runs on
    rt.pump()
    info = client.status(dom, timeout=T)
    assert info.state == State.RUNNING and info.cores == [0, 1]
    with pytest.raises(ProcMgmtError) as e:
        client.span(dom, 1, timeout=T)
    assert e.value.code == Err.ALREADY_SPANNED
    client.kill(dom, timeout=T)
    assert client.wait(dom, timeout=T) == 9
    assert client.status(dom, timeout=T).state == State.CLEANED
