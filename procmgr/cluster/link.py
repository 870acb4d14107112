"""An asyncio program's traffic to one other node's agent
(``AsyncCluster``), cut to few actor calls: an actor call costs ~1 ms of
several processes' CPU here, a spawn on the node ~0.5 ms.

- **Calls are batched**: the calls made in one pass of the event loop (64
  coroutines spawning at once) go as one ``call_many``, answered in order.
- **Waits share one stream of ends**: a wait first asks whether the domain
  has ended (a ``poll``, batched with the rest); if not, it waits for its
  end on the node's stream -- one ``exits_after`` call at a time for all
  of this program's waits on the node, answered when one or more end.

Why no end is missed: every batch's answer carries the seq of the last
event the agent had seen before any of the batch ran, so an end after a
poll that said "running" is after that seq; the stream starts at or before
it, and keeps the ends it has seen lately for a wait that registers after
the stream passed them (``recent``). An end older than the agent keeps is
said "lost": every wait asks again."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from procmgr.cluster.agent import WAIT_SLICE
from procmgr.cluster.ops import answer_of
from procmgr.errors import ProcMgmtError

# Ends seen lately, for a wait whose poll came before them and its
# registering after: more than the calls in flight at once.
RECENT = 65536


class NodeLink:
    def __init__(self, node: str, send, runtime: str = ""):
        """``send(method, *args, timeout)``: the awaited actor call of this
        node's agent (whose runtime is ``runtime``), its failures raised as
        the cluster's errors."""
        self.node = node
        self.runtime = runtime
        self._send = send
        self._queue: list = []            # (call, future) for the next batch
        self._waiters: dict[int, tuple[int, list]] = {}   # id -> (nonce, its waits' futures)
        self._recent: OrderedDict[int, tuple[int, int]] = OrderedDict()  # id -> (seq, code)
        self._cursor = 0
        self._watching: asyncio.Task | None = None

    async def call(self, *call, timeout: float | None = None, alone: bool = False):
        """One agent call (agent.py's ``call``), batched -- or, ``alone``,
        sent in a batch of its own at once (one that may take long: a
        kill's grace): (seq the agent had seen before it ran, its answer)."""
        fut = asyncio.get_running_loop().create_future()
        if alone:
            asyncio.ensure_future(self._send_batch([(call, timeout, fut)]))
            return await fut
        self._queue.append((call, timeout, fut))
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if batch:
            asyncio.ensure_future(self._send_batch(batch))

    async def _send_batch(self, batch: list) -> None:
        longest = max((t or 0) for _, t, _ in batch)
        try:
            seq, answers = await self._send("call_many", [c for c, _, _ in batch],
                                            timeout=longest)
        except BaseException as e:        # noqa: BLE001 - each caller hears it
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, _, fut), answer in zip(batch, answers):
            if not fut.done():
                fut.set_result((seq, answer))

    def end_of(self, ident: int, nonce: int, seq: int) -> asyncio.Future:
        """A future of domain ``ident``'s exit status, which a poll after
        seq ``seq`` found running."""
        fut = asyncio.get_running_loop().create_future()
        seen = self._recent.get(ident)
        if seen is not None and seen[0] > seq:
            fut.set_result(seen[1])
            return fut
        self._waiters.setdefault(ident, (nonce, []))[1].append(fut)
        if self._watching is None or self._watching.done():
            self._cursor = seq
            self._watching = asyncio.ensure_future(self._watch())
        else:
            self._cursor = min(self._cursor, seq)
        return fut

    def forget(self, ident: int, fut: asyncio.Future) -> None:
        """A wait given up (its timeout, a cancel)."""
        _, futs = self._waiters.get(ident, (0, []))
        if fut in futs:
            futs.remove(fut)
        if not futs:
            self._waiters.pop(ident, None)

    async def _watch(self) -> None:
        while self._waiters:
            asked = self._cursor
            try:
                answer = await self._send("exits_after", asked, WAIT_SLICE,
                                          timeout=WAIT_SLICE)
            except BaseException as e:    # noqa: BLE001 - every waiter hears it
                self._fail_all(e)
                return
            if answer[0] == "lost":       # ends we cannot know of: each asks again
                self._cursor = answer[1]
                await self._ask_again()
                continue
            _, seen, ends = answer
            for seq, ident, code in ends:
                self._recent[ident] = (seq, code)
                for fut in self._waiters.pop(ident, (0, []))[1]:
                    if not fut.done():
                        fut.set_result(code)
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
            # A wait that registered meanwhile may have lowered the cursor
            # below what was asked: its end may lie between, not yet
            # fetched -- ask from there again (an end twice is harmless).
            if self._cursor >= asked:
                self._cursor = max(asked, seen)

    async def _ask_again(self) -> None:
        """Every waited-for domain polled again (one batch)."""
        waiters, self._waiters = self._waiters, {}
        asked = [(ident, nonce, [f for f in futs if not f.done()])
                 for ident, (nonce, futs) in waiters.items()]
        answers = await asyncio.gather(*(self.call("poll", ident, nonce)
                                         for ident, nonce, _ in asked), return_exceptions=True)
        for (ident, nonce, futs), got in zip(asked, answers):
            if isinstance(got, BaseException):
                for fut in futs:
                    fut.set_exception(got)
            else:
                try:
                    status = answer_of(got[1])
                except ProcMgmtError as e:    # the domain forgotten meanwhile
                    for fut in futs:
                        fut.set_exception(e)
                    continue
                if status is None:
                    self._waiters.setdefault(ident, (nonce, []))[1].extend(futs)
                else:
                    for fut in futs:
                        fut.set_result(status)

    def _fail_all(self, e: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        for _, futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(e)

