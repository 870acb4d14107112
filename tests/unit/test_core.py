"""The manager's core in C (procmgr/manager/core/): its limits, and the bad
input its own interface gets. Its behaviour per message is what the rest of
the suite drives, always through the event loop as production does (the
core serving one-slot messages in C straight from the rings, the rest from
Python): tests/regress (one file per Barrelfish defect, under both pending
strategies) and tests/unit through the in-process runtime, tests/e2e
through the real manager process."""

import pytest

from procmgr.manager import _core
from procmgr.client.client import Domain
from procmgr.protocol import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.testing.inprocess import InProcessRuntime
from procmgr.manager.manager import Manager
from procmgr.manager.pending import HashTable, PendingSlot, ReplyQueue
from procmgr import protocol
from procmgr.protocol import Flag, Op


def test_a_cleaned_domain_is_remembered_for_the_last_4096_only():
    """A late wait still gets a cleaned domain's status, up to the history
    bound; then DOMAIN_FORGOTTEN (an id never issued is DOMAIN_TABLE_FIND).
    Memory stays bounded over any number of spawns."""
    with InProcessRuntime(cores=1, releases=True) as rt:
        client = rt.client()
        first = client.spawn(["a"], core=0)
        client.kill(first)
        assert client.wait(first) == 9
        doms = [client.spawn_async(["a"], core=0) for _ in range(4096)]
        doms = [client.wait_for(f) for f in doms]
        for fut in [client.kill_async(d) for d in doms]:
            client.wait_for(fut)
        with pytest.raises(ProcMgmtError) as dropped:
            client.wait(first)
        assert dropped.value.code == Err.DOMAIN_FORGOTTEN
        with pytest.raises(ProcMgmtError) as gone:
            client.status(first.id)
        assert gone.value.code == Err.DOMAIN_FORGOTTEN
        with pytest.raises(ProcMgmtError) as never:
            client.wait(Domain(doms[-1].id + 1, doms[-1].nonce))
        assert never.value.code == Err.DOMAIN_TABLE_FIND
        assert client.wait(doms[0]) == 9 and client.wait(doms[-1]) == 9
        assert len(rt.manager.table) == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"history": 0}, "history"),
    ({"max_cores": 0}, "max_cores"),
    ({"max_cores": 0x10001}, "max_cores"),
    ({"pending": "fifo"}, "pending must be one of replyq, hashtable"),
    ({"reply_queue": 3}, "power of two"),
])
def test_core_limits_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _core.Core(**kwargs)


def test_a_core_is_initialised_once():
    mgr = Manager()
    with pytest.raises(RuntimeError, match="once"):
        mgr.core.__init__()


def test_pending_structures_refuse_what_is_not_theirs():
    for p in (ReplyQueue(4), HashTable(4)):
        with pytest.raises(TypeError, match="PendingSlot"):
            p.release("a slot")
        with pytest.raises(OverflowError, match="u32"):
            p.claim(1 << 32, Op.SD_KILL, 1)
        with pytest.raises(TypeError):
            p.claim(1, Op.SD_KILL)
    with pytest.raises(KeyError, match="does not hold"):
        HashTable(4).release(PendingSlot())
    with pytest.raises(ValueError, match="1..2"):
        HashTable(0)


def test_a_bug_in_a_handler_is_answered_internal_and_the_manager_carries_on(monkeypatch,
                                                                            capsys):
    from procmgr.manager import handlers

    def broken(mgr, client, msg):
        raise RuntimeError("a bug")

    with InProcessRuntime(cores=1, releases=True) as rt:
        client = rt.client()
        monkeypatch.setitem(handlers.PYTHON_HANDLERS, Op.GET_STATS, broken)
        with pytest.raises(ProcMgmtError) as failed:
            client.stats()
        assert failed.value.code == Err.INTERNAL
        assert "a bug" in capsys.readouterr().err        # the traceback was printed
        assert rt.manager.internal_errors == 1
        dom = client.spawn(["a"], core=0)                # everyone else is still served
        client.kill(dom)
        assert client.wait(dom) == 9
        assert all(not c.outstanding for c in rt.manager.clients.values())


def test_keyboard_interrupt_in_a_handler_is_not_taken_for_a_bug(monkeypatch):
    from procmgr.manager import handlers

    def interrupted(mgr, client, msg):
        raise KeyboardInterrupt

    with InProcessRuntime(cores=1) as rt:
        client = rt.client()
        monkeypatch.setitem(handlers.PYTHON_HANDLERS, Op.GET_STATS, interrupted)
        with pytest.raises(KeyboardInterrupt):
            client.stats()
        assert rt.manager.internal_errors == 0


def test_an_answer_too_long_for_the_wire_is_a_bug_answered_internal(monkeypatch, capsys):
    from procmgr.manager import handlers

    def too_long(mgr, client, msg):
        mgr.answer(client, msg, payload=b"x" * (protocol.MAX_PAYLOAD + 1))

    with InProcessRuntime(cores=1) as rt:
        client = rt.client()
        monkeypatch.setitem(handlers.PYTHON_HANDLERS, Op.GET_STATS, too_long)
        with pytest.raises(ProcMgmtError) as failed:
            client.stats()
        assert failed.value.code == Err.INTERNAL
        assert "over the 8208-byte limit" in capsys.readouterr().err


def _live(client, n: int) -> list:
    futures = [client.spawn_async(["a"], core=0) for _ in range(n)]
    return [client.wait_for(f) for f in futures]


def test_a_listing_goes_page_by_page_in_id_order_and_through_churn():
    """domains() comes in pages (GET_DOMAINLIST from a cursor): all of
    them, in id order. Between two pages the domains at and after the
    cursor may end: the next page goes on from the next live one -- found
    among the next few ids, or else by a walk -- and every domain that
    lived throughout is listed once."""
    with InProcessRuntime(cores=1, releases=True) as rt:
        client = rt.client()
        doms = _live(client, 3000)
        assert client.domains() == [d.id for d in doms]
        table = rt.manager.table
        ids = [d.id for d in doms]

        def end(ds):
            for fut in [client.kill_async(d) for d in ds]:
                client.wait_for(fut)
            for d in ds:
                client.wait(d)                 # cleaned: off the live list
        page, more = table.page(0, 10)
        assert page == ids[:10] and more
        end(doms[9:80])                        # the cursor's and the next 70: past the probes
        page, more = table.page(ids[9] + 1, 10)
        assert page == ids[80:90]
        end(doms[89:92])                       # the cursor's and the next two
        page, more = table.page(ids[89] + 1, 10)
        assert page == ids[92:102]
        listed = page
        while more:
            page, more = table.page(listed[-1] + 1, 10)
            listed += page
        assert listed == ids[92:]
        assert table.page(ids[-1] + 1, 10) == ([], False)


def test_a_page_costs_what_is_on_it_not_the_table():
    """A page from a cursor deep in a table of 50,000 live domains costs a
    small fraction of walking them all (what each page cost before)."""
    import time

    with InProcessRuntime(cores=1) as rt:
        client = rt.client()
        doms = _live(client, 50_000)
        table = rt.manager.table
        cursor = doms[40_000].id

        def best(f, n=5):
            times = []
            for _ in range(n):
                t = time.perf_counter()
                f()
                times.append(time.perf_counter() - t)
            return min(times)
        page = best(lambda: table.page(cursor, 256))
        walk = best(lambda: table.ids())
        assert table.page(cursor, 256)[0] == [d.id for d in doms[40_000:40_256]]
        assert page * 20 < walk, (page, walk)


def test_a_client_leaving_costs_what_it_owes_not_the_table():
    """A departing client's waits and kills are taken off the domains its
    unanswered requests name -- not found by walking every live domain,
    which cost each departure ~30 ms at a million. Its waits are gone (the
    domain's end answers only the others); it costs a small fraction of a
    walk of 50,000 live domains."""
    import time

    with InProcessRuntime(cores=1, releases=True) as rt:
        owner = rt.client()
        doms = _live(owner, 50_000)
        leavers = [rt.client() for _ in range(20)]
        for k, c in enumerate(leavers):
            c.wait_async(doms[k])              # unanswered: the domain runs
        stays = owner.wait_async(doms[0])
        bindings = sorted(rt.manager.clients.values(), key=lambda b: b.id)[-20:]
        rt.pump()
        times = []
        for b in bindings:
            t = time.perf_counter()
            rt.manager.client_gone(b)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        rt.manager.table.ids()
        walk = time.perf_counter() - t
        assert sorted(times)[len(times) // 2] * 20 < walk, (times, walk)
        gone = {b.id for b in bindings}
        for d in doms[:20]:
            waiters = rt.manager.core.domain(d.id)["waiters"]
            assert not {w[0] for w in waiters} & gone, waiters
        assert len(rt.manager.core.domain(doms[0].id)["waiters"]) == 1   # the owner's
        owner.kill(doms[0])
        assert owner.wait_for(stays) == 9       # the one who stayed is answered
        assert rt.manager.core.domain(doms[0].id)["waiters"] == []


def test_a_client_may_owe_at_most_65536_answers_then_busy():
    """Each unanswered request costs the manager memory until its answer (a
    wait, until its domain ends): one client parking waits under ever new
    sequence numbers grew it to 1.3 GB. Past 65,536 unanswered a request is
    answered BUSY at once; the ones parked are answered as ever."""
    with InProcessRuntime(cores=1, releases=True) as rt:
        client = rt.client()
        d = client.spawn(["a"], core=0)
        waits = [client.wait_async(d) for _ in range(65_536 + 10)]
        outcomes = []
        rt.client().kill(d)          # another client: this one owes too many
        for fut in waits:
            try:
                outcomes.append(client.wait_for(fut))
            except ProcMgmtError as e:
                outcomes.append(e.code)
        assert outcomes.count(Err.BUSY) >= 10
        assert outcomes.count(9) + outcomes.count(Err.BUSY) == len(waits)
        assert outcomes.count(9) >= 65_536 - 1       # (the spawn was owed too, once)


def test_the_core_refuses_arguments_that_do_not_fit_rather_than_cut_them():
    core = _core.Core()
    with pytest.raises(ValueError, match="PEER_CLIENT or PEER_SPAWND"):
        core.undecodable(7, 1)
    with pytest.raises(OverflowError, match="32 bits"):
        core.lost(_core.PEER_CLIENT, 2**32 + 5)
    with pytest.raises(OverflowError, match="8 bits"):
        core.answer(1, 256, 1)
    with pytest.raises(TypeError, match="serves a Core"):
        _core.RingSet(-1, -1, object())
