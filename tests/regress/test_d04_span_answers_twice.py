"""Defect 4: span answers twice.

Barrelfish's ``span_handler`` had no return before ``respond_with_err``:
it answered OK at once, before spawnd had done anything, and the reply
handler answered a second time with spawnd's result.

Here span is answered once, after the spawnd's reply, with its result:
the new dispatcher's pid, or the spawnd's error.
"""

from __future__ import annotations

from procmgr.protocol import State
from procmgr.errors import Err
from procmgr.protocol import Op
from regress_helpers import (
    TIMEOUT, assert_healthy, outcome, requests_for, settle, state_of,
)


def test_span_answered_once_after_the_spawnd_reply(rt, client):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd1 = rt.spawnds[1]
    sd1.hold = True
    fut = client.span_async(dom, 1)
    settle(rt, client)
    assert requests_for(sd1, dom.id, Op.SD_SPAN) == 1
    assert not fut.done(), "span answered before the spawnd replied"
    sd1.hold = False
    sd1.release()
    settle(rt, client)
    pid = outcome(fut)
    assert isinstance(pid, int) and pid > 0
    info = client.status(dom, timeout=TIMEOUT)
    assert info.cores == [0, 1] and info.pids[1] == pid
    assert_healthy(rt, client)


def test_failed_span_answered_once_with_the_error(rt, client):
    dom = client.spawn(["a"], core=0, timeout=TIMEOUT)
    sd1 = rt.spawnds[1]
    sd1.hold = True
    sd1.fail(Op.SD_SPAN, Err.EXEC_FAILED, 8)
    fut = client.span_async(dom, 1)
    settle(rt, client)
    assert not fut.done()
    sd1.hold = False
    sd1.release()
    settle(rt, client)
    assert outcome(fut) == Err.EXEC_FAILED
    info = client.status(dom, timeout=TIMEOUT)
    assert (info.state, info.cores) == (State.RUNNING, [0])
    # A failed span leaves nothing behind: spanning again works.
    assert client.span(dom, 1, timeout=TIMEOUT) > 0
    assert client.status(dom, timeout=TIMEOUT).cores == [0, 1]
    assert_healthy(rt, client)


def test_many_spans_each_answered_once(make_rt):
    rt = make_rt(cores=4)
    c = rt.client()
    doms = [c.spawn([f"d{i}"], core=0, timeout=TIMEOUT) for i in range(3)]
    futs = [(d, core, c.span_async(d, core)) for d in doms for core in (1, 2, 3)]
    for d, core, f in futs:
        assert c.wait_for(f, timeout=TIMEOUT) > 0
    for d in doms:
        assert c.status(d, timeout=TIMEOUT).cores == [0, 1, 2, 3]
        c.kill(d, timeout=TIMEOUT)
        assert c.wait(d, timeout=TIMEOUT) == 9
        assert state_of(c, d) == State.CLEANED
    assert_healthy(rt, c)
