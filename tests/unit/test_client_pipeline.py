"""Pipelining from one client: Future callbacks, poll with a timeout, and
the spawn payload each side remembers. Driven through the whole control
plane in one process (simulated dispatchers)."""

import time

import pytest

from bench.pipeline import spawn_kill_wait_rate
from procmgr.errors import Err, ProcMgmtError
from procmgr.testing.inprocess import InProcessRuntime
from procmgr.protocol import Msg, Op, SpawnArgs


@pytest.fixture
def rt():
    with InProcessRuntime(cores=2, prefix="procmgr-test") as rt:
        yield rt


def test_callbacks_chain_requests(rt):
    """Each spawn's answer sends that domain's kill and wait."""
    client = rt.client()
    statuses = []

    def spawned(fut):
        dom = fut.result()
        client.kill_async(dom)
        client.wait_async(dom).add_done_callback(lambda f: statuses.append(f.result()))

    for i in range(20):
        client.spawn_async(["prog"], core=i % 2).add_done_callback(spawned)
    deadline = time.monotonic() + 10
    while len(statuses) < 20 and time.monotonic() < deadline:
        client.poll()
    assert statuses == [9] * 20
    assert len(rt.manager.table) == 0        # every domain stopped and cleaned


def test_callback_on_answered_future_runs_at_once(rt):
    client = rt.client()
    fut = client.spawn_async(["prog"])
    client.wait_for(fut, timeout=5)
    seen = []
    fut.add_done_callback(seen.append)
    assert seen == [fut]


def test_failing_callback_loses_no_other_answer(rt, caplog):
    """One callback raising does not cost the other answers of its batch
    their callbacks, nor the call that took them in anything: its error is
    logged, as concurrent.futures does, and it runs once."""
    client = rt.client()
    seen, calls = [], []

    def boom(fut):
        calls.append(fut)
        raise RuntimeError("callback failed")

    first = client.spawn_async(["prog"])
    first.add_done_callback(boom)
    rest = [client.spawn_async(["prog"]) for _ in range(5)]
    for fut in rest:
        fut.add_done_callback(seen.append)
    assert client.wait_for(rest[-1], timeout=5).id > 0
    assert seen == rest and calls == [first]
    assert "callback failed" in caplog.text
    client.poll()
    assert seen == rest and calls == [first]


def test_poll_with_timeout_waits_for_an_answer():
    with InProcessRuntime(cores=1, prefix="procmgr-test", threads=True) as rt:
        client = rt.client()
        start = time.monotonic()
        client.poll(timeout=0.2)                     # nothing in flight: waits it out
        assert time.monotonic() - start >= 0.15
        fut = client.spawn_async(["prog"])
        deadline = time.monotonic() + 5
        while not fut.done() and time.monotonic() < deadline:
            client.poll(timeout=1.0)                 # returns when the answer is in
        assert fut.result().id > 0


def test_same_argv_spawned_many_times_keeps_its_own_table_entries(rt):
    client = rt.client()
    doms = [client.spawn(["prog", "a"], timeout=5) for _ in range(3)]
    assert len({d.id for d in doms}) == 3
    for d in doms:
        entry = rt.manager.table.by_id(d.id)
        assert entry.argv == ["prog", "a"]
    rt.manager.table.by_id(doms[0].id).argv.append("changed")
    assert rt.manager.table.by_id(doms[1].id).argv == ["prog", "a"]
    assert client.spawn(["prog", "a"], timeout=5).id > doms[-1].id


def test_bad_spawn_payload_refused_every_time(rt):
    """A payload that does not decode is refused each time it is sent (a
    failure is not remembered), and good spawns around it are served."""
    client = rt.client()
    bad = SpawnArgs("prog", ["prog"]).encode()[:-1]      # argv loses its NUL
    for _ in range(2):
        fut = client.request(Msg(Op.SPAWN, payload=bad))
        with pytest.raises(ProcMgmtError) as e:
            client.wait_for(fut, timeout=5)
        assert e.value.code == Err.BAD_MESSAGE
        assert client.spawn(["prog"], timeout=5).id > 0


def test_bad_argv_still_says_what_is_wrong(rt):
    client = rt.client()
    with pytest.raises(ValueError, match="NUL"):
        client.spawn_async(["prog", "a\0b"])
    with pytest.raises(TypeError, match=r"argv\[1\] must be str, bytes or os.PathLike, not list"):
        client.spawn_async(["prog", ["not", "text"]])
    with pytest.raises(TypeError, match=r"argv\[1\] must be .*, not int"):
        client.spawn_async(["prog", 7])
    assert client.spawn(["prog"], timeout=5).id > 0      # nothing left half-sent


def test_pipeline_driver_leaves_nothing_behind(rt):
    client = rt.client()
    rate = spawn_kill_wait_rate(client, cores=2, domains=300, in_flight=64)
    assert rate > 0
    assert len(rt.manager.table) == 0
    assert all(not c.outstanding for c in rt.manager.clients.values())
    assert client.in_flight == 0


@pytest.mark.parametrize("where", ["taking", "answering", "calling back"])
def test_a_ctrl_c_in_the_readers_round_loses_no_answer(rt, monkeypatch, where):
    """A KeyboardInterrupt while the reader has answers in hand -- just
    taken from the ring, about to be given, or in a callback once given:
    it reaches the caller, and every answer still reaches its future, at
    the next round; nothing is left owed (in_flight 0)."""
    import procmgr.client.client as client_module

    client = rt.client()
    futures = [client.spawn_async(["prog"], core=i % 2) for i in range(8)]
    rt.pump()                                   # all eight answers wait in the ring
    real_take, real_answer_all = client_module.take, client_module._answer_all
    fired = []

    def take_then_interrupt(*args, **kw):
        got = real_take(*args, **kw)
        if got and not fired:
            fired.append(where)
            raise KeyboardInterrupt
        return got

    def interrupt_before(client_, futs, answers):
        if not fired:
            fired.append(where)
            raise KeyboardInterrupt
        real_answer_all(client_, futs, answers)

    if where == "taking":
        monkeypatch.setattr(client_module, "take", take_then_interrupt)
    elif where == "answering":
        monkeypatch.setattr(client_module, "_answer_all", interrupt_before)
    else:
        def interrupting_callback(fut):
            if not fired:
                fired.append(where)
                raise KeyboardInterrupt
        futures[3].add_done_callback(interrupting_callback)
    with pytest.raises(KeyboardInterrupt):
        client.poll()
    assert fired == [where]
    monkeypatch.undo()
    doms = [f.result(timeout=5) for f in futures]
    assert len({d.id for d in doms}) == 8
    assert client.in_flight == 0 and client.unmatched_answers == 0
