"""The reply queue and the hashtable are two implementations of one
interface: on the same scripted scenario clients must see the same results."""

import errno

import pytest

from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.testing.inprocess import InProcessRuntime
from procmgr.protocol import Op


def outcome(client, fut):
    """What a user sees of one request: its result, or its error code."""
    try:
        result = client.wait_for(fut, timeout=5)
    except ProcMgmtError as e:
        return ("error", e.code.name if isinstance(e.code, Err) else e.code)
    if hasattr(result, "nonce"):          # a Domain: its nonce is random
        return ("domain", result.id, result.core)
    return ("ok", result)


def scenario(pending: str) -> list:
    seen = []
    with InProcessRuntime(cores=3, pending=pending, prefix="procmgr-test") as rt:
        c1, c2 = rt.client(), rt.client()
        doms = [c1.wait_for(c1.spawn_async(["prog", str(i)], core=i % 3)) for i in range(6)]
        # a failed spawn, a spawn on a missing core
        rt.spawnds[1].fail(Op.SD_SPAWN, Err.EXEC_FAILED, errno.ENOENT)
        seen.append(outcome(c1, c1.spawn_async(["missing"], core=1)))
        seen.append(outcome(c1, c1.spawn_async(["x"], core=7)))
        # spans, one of them to a core the domain has
        seen.append(outcome(c1, c1.span_async(doms[0], 1)))
        seen.append(outcome(c1, c1.span_async(doms[0], 0)))
        # waiters from two clients, then concurrent killers from both
        waits = [c.wait_async(doms[0]) for c in (c1, c2)]
        kills = [c.kill_async(doms[0]) for c in (c1, c2)]
        seen += [outcome(c, f) for c, f in zip((c1, c2), kills)]
        seen += [outcome(c, f) for c, f in zip((c1, c2), waits)]
        # a dispatcher exits by itself; kill racing that exit
        rt.spawnds[doms[1].core].exit(doms[1].id, 7)
        seen.append(outcome(c2, c2.kill_async(doms[1])))
        seen.append(outcome(c2, c2.wait_async(doms[1])))
        # exit through the manager, nohang, waits on cleaned domains
        seen.append(outcome(c1, c1.wait_async(doms[2], nohang=True)))
        c1.exit(doms[2], 3)
        seen.append(outcome(c1, c1.wait_async(doms[2])))
        seen.append(outcome(c2, c2.kill_async(doms[2])))
        # bad caps
        forged = type(doms[3])(doms[3].id, doms[3].nonce ^ 1)
        seen.append(outcome(c2, c2.kill_async(forged)))
        seen.append(outcome(c2, c2.wait_async(type(doms[3])(999, 1))))
        seen.append(tuple(sorted(c1.domains())))
        seen.append([(i.state, i.exit_status, i.cores) for i in
                     (c1.status(d) for d in doms[:3])])
        assert all(c1.status(d).state in (State.RUNNING,) for d in doms[3:])
    return seen


def test_same_client_visible_results():
    replyq, hashtable = scenario("replyq"), scenario("hashtable")
    assert replyq == hashtable
    # and the scenario really exercised the interesting answers
    flat = repr(replyq)
    for expected in ("EXEC_FAILED", "INVALID_SPAWND", "ALREADY_SPANNED", "BAD_CAP",
                     "DOMAIN_TABLE_FIND", "DOMAIN_NOT_RUNNING"):
        assert expected in flat


@pytest.mark.parametrize("pending", ["replyq", "hashtable"])
def test_scenario_outcomes(pending):
    seen = scenario(pending)
    assert ("ok", 9) in seen          # waiters of the killed domain
    assert ("ok", 7) in seen          # the dispatcher's own exit status
    assert ("ok", 3) in seen          # exit through the manager
    assert ("ok", None) in seen       # nohang on a running domain
