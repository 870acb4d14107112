"""procmgr/cluster/link.py against a fake agent: calls made together go as
one batch, a wait whose end the stream of ends passed before it
registered still hears it, a stream told "lost" polls every wait again,
and a node that fails fails every waiter -- no Ray, no processes."""

from __future__ import annotations

import asyncio

import pytest

from procmgr.client.client import Domain
from procmgr.cluster.cluster import ClusterDomain
from procmgr.cluster.link import NodeLink
from procmgr.errors import Err, ProcMgmtError


class FakeAgent:
    """An agent's ``call_many`` and ``exits_after``, as agent.py answers
    them, over a table of domains: id -> status (None: running)."""

    def __init__(self):
        self.status: dict[int, int | None] = {}
        self.ends: list[tuple[int, int, int]] = []   # (seq, id, status)
        self.seq = 0
        self.batches: list[int] = []
        self.lost_once = False
        self.fail: Exception | None = None
        self.changed = asyncio.Event()

    def end(self, ident: int, status: int) -> None:
        self.seq += 1
        self.status[ident] = status
        self.ends.append((self.seq, ident, status))
        self.changed.set()

    async def send(self, method: str, *args, timeout=None):
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        if method == "call_many":
            calls, = args
            self.batches.append(len(calls))
            answers = []
            for op, ident, _nonce in calls:
                assert op == "poll"
                answers.append(("ok", self.status[ident]))
            return self.seq, answers
        seq, wait = args
        if self.lost_once:
            self.lost_once = False
            return ("lost", self.seq)
        ends = [e for e in self.ends if e[0] > seq]
        if not ends:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            if self.fail is not None:
                raise self.fail
            ends = [e for e in self.ends if e[0] > seq]
        return ("ok", self.seq, ends)


async def wait(link: NodeLink, ident: int):
    seq, answer = await link.call("poll", ident, 7)
    if answer[1] is not None:
        return answer[1]
    return await link.end_of(ident, 7, seq)


def test_calls_made_together_go_as_one_batch_and_waits_hear_their_ends():
    async def main():
        agent = FakeAgent()
        link = NodeLink("n", agent.send)
        agent.status = {i: None for i in range(10)}
        agent.status[3] = 5                       # ended before its poll
        waits = [asyncio.ensure_future(wait(link, i)) for i in range(10)]
        await asyncio.sleep(0.01)
        assert agent.batches == [10]
        for i in range(10):
            if i != 3:
                agent.end(i, i)
        assert await asyncio.gather(*waits) == [0, 1, 2, 5, 4, 5, 6, 7, 8, 9]
    asyncio.run(main())


def test_an_end_the_stream_passed_before_the_wait_registered_is_heard():
    async def main():
        agent = FakeAgent()
        link = NodeLink("n", agent.send)
        agent.status = {1: None, 2: None}
        first = asyncio.ensure_future(wait(link, 1))   # starts the stream
        await asyncio.sleep(0.01)
        seq, answer = await link.call("poll", 2, 7)    # 2 runs at seq
        agent.end(2, 4)                                 # ends; the stream takes it
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(link.end_of(2, 7, seq), 1) == 4
        agent.end(1, 0)
        assert await first == 0
    asyncio.run(main())


async def two_waiting() -> tuple[FakeAgent, list]:
    """An agent with domains 1 and 2 running, and a wait on each."""
    agent = FakeAgent()
    link = NodeLink("n", agent.send)
    agent.status = {1: None, 2: None}
    waits = [asyncio.ensure_future(wait(link, i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    return agent, waits


def test_a_lost_stream_polls_every_wait_again():
    async def main():
        agent, waits = await two_waiting()
        agent.status[1] = 9                  # ended where the stream could not tell,
        agent.lost_once = True               # which says so at its next ask
        agent.end(2, 3)
        assert await asyncio.wait_for(asyncio.gather(*waits), 2) == [9, 3]
    asyncio.run(main())


def test_a_node_that_fails_fails_every_waiter():
    async def main():
        agent, waits = await two_waiting()
        agent.fail = ProcMgmtError(Err.NODE_DIED, "node n: gone")
        agent.changed.set()
        for w in waits:
            with pytest.raises(ProcMgmtError) as e:
                await asyncio.wait_for(w, 2)
            assert e.value.code == Err.NODE_DIED
    asyncio.run(main())


def test_a_wait_registering_behind_a_stream_in_flight_still_hears_its_end():
    """A poll's answer that comes late (batched with something slow) names
    an older seq than the stream already asks from: the stream must not
    jump past the end in between."""
    async def main():
        agent = FakeAgent()
        link = NodeLink("n", agent.send)
        agent.status = {1: None, 2: None}
        seq_x, _ = await link.call("poll", 1, 7)       # X runs, at seq 0
        agent.end(1, 7)                                 # X ends: seq 1
        first = asyncio.ensure_future(wait(link, 2))   # Y polls at seq 1: the stream
        await asyncio.sleep(0.01)                       # asks from 1, and waits
        late = link.end_of(1, 7, seq_x)                # X's wait registers, from 0
        agent.end(2, 0)                                 # the stream's answer: Y only
        assert await first == 0
        assert await asyncio.wait_for(late, 2) == 7
    asyncio.run(main())


@pytest.mark.parametrize("token", ["-1:ff", "1_0:ff", "4294967296:1", "1:fffffffffffffffff",
                                   "1 :a", "1:", ":a", "1:g", "", "1:2:3"])
def test_a_token_is_only_what_token_writes(token):
    with pytest.raises(ValueError, match="not a domain token"):
        Domain.from_token(token)
    with pytest.raises(ValueError, match="not a cluster domain token"):
        ClusterDomain.from_token(f"node/runtime/{token}")


def test_a_token_round_trips():
    d = Domain(4294967295, 0xFFFFFFFFFFFFFFFF)
    assert Domain.from_token(d.token) == d
    c = ClusterDomain("n", "ray-n-1", 7, 0xAB)
    assert ClusterDomain.from_token(c.token) == c
