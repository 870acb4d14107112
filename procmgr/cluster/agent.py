"""The node agent: one Ray actor on each node of the cluster, pinned there
(node-affinity scheduling, not soft), that owns a normal procmgr runtime
of that node's cores and answers for it (docs/cluster.md).

It is a detached, named actor (``procmgr-agent-<node id>`` in Ray's
namespace "procmgr"), so that it outlives the process that started it
(``procmgr cluster up``) and any process finds it by its node. It asks
for no CPU of Ray's (``num_cpus=0``): the programs it starts are the
node's work, not Ray's tasks.

Its runtime is its child: if the agent dies -- killed, or with its node
-- the runtime's manager sees its owner gone and ends every domain (the
runtime's own guarantee: nothing outlives the owner). A new agent on a
live node starts a new runtime; domains of the old one are answered
NODE_DIED by the cluster, which tells the two apart by the runtime's name
carried in every domain's token.

Calls are coroutines of an async actor: a ``wait`` that takes minutes
holds up nothing else. Each answers ("ok", value) or ("error", code,
detail, status) for a procmgr error, which the cluster raises again as
the same ProcMgmtError (an exception Ray carries may not rebuild as its
own class)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets
import socket
from collections import deque

from procmgr.cluster.ops import OPS, domain_of
from procmgr.errors import ProcMgmtError

NAMESPACE = "procmgr"
NAME_PREFIX = "procmgr-agent-"
# How long a wait on the agent lasts at most before it answers "still
# running": the cluster asks again, and a caller of a node that stopped
# answering hears of it within this and Ray's timeout (Cluster.wait).
WAIT_SLICE = 5.0
# The ends kept for exits_after: a client's stream of ends that falls
# further behind is told, and asks each of its waits again.
ENDS_KEPT = 65536


def agent_name(node_id: str) -> str:
    return NAME_PREFIX + node_id


class NodeAgent:
    """The actor's class (made one by procmgr.cluster: ``ray.remote`` is
    applied where Ray is imported). ``cores``: the runtime's, None for
    the node's CPUs as Ray counts them; ``containment``: as
    ``procmgr.Runtime``'s."""

    def __init__(self, cores: int | None = None, containment: str = "auto"):
        import ray
        from procmgr.client.runtime import Runtime
        self.node_id = ray.get_runtime_context().get_node_id()
        if cores is None:
            cores = _node_cpus(ray, self.node_id)
        _remove_dead_runtimes(f"ray-{self.node_id[:12]}-")   # of agents before this one
        self.runtime = Runtime(cores=cores, containment=containment,
                               name=f"ray-{self.node_id[:12]}-{secrets.token_hex(3)}").start()
        self.cores = cores
        self.pm = None
        self.live = [0] * cores            # live domains per core, from the events
        self.seen = 0                      # the seq of the last event counted
        self.ends: deque = deque(maxlen=ENDS_KEPT)   # (seq, domain, wait's status)
        self.ends_from = 0                 # ends after this seq are all in `ends`
        self._ended = None                 # asyncio.Condition: an end came
        self._waits: dict = {}             # (id, nonce) -> the runtime's wait, shared
        self._counting = None

    async def _client(self):
        if self.pm is None:
            self.pm = await self.runtime.aclient()
            self._ended = asyncio.Condition()
            self._counting = asyncio.ensure_future(self._count_live())
        return self.pm

    async def _count_live(self) -> None:
        """Live domains per core, for the cluster's placement: every
        domain's start and end, whoever spawned it (a process of this node
        through the rings too), from the runtime's events. Whatever ends
        a pass (a request that timed out: a manager stopped a while) is
        logged and the following goes on from the last event counted,
        recounting, and telling the streams of ends they may have lost."""
        while True:
            try:
                await self._follow_events()
            except asyncio.CancelledError:
                raise
            except Exception as e:            # noqa: BLE001 - the follower must go on
                logging.getLogger(__name__).warning("events follower: %s; going on", e)
                self.ends_from = self.seen
                await asyncio.sleep(0.5)
                try:
                    await self._recount()
                except Exception:             # noqa: BLE001 - counted at the next pass
                    pass

    async def _recount(self) -> None:
        live = [0] * self.cores
        for ident in await self.pm.domains():
            try:
                info = await self.pm.status(ident)
            except ProcMgmtError:
                continue
            if info.state.name in ("RUNNING", "STOP_PEND"):
                for core in info.cores:
                    live[core] += 1
        self.live = live

    async def _follow_events(self) -> None:
        async for event in self.pm.events(after=self.seen):
            self._note_end(event)
            if event.kind == "lost":           # behind: count them again
                await self._recount()
            elif event.kind == "spawned" and event.core < self.cores:
                self.live[event.core] += 1
            elif event.kind in ("exited", "killed") and event.core < self.cores:
                self.live[event.core] = max(0, self.live[event.core] - 1)

    def _note_end(self, event) -> None:
        """The ends, for exits_after: each as its wait says it."""
        if event.kind == "lost":
            self.ends_from = event.seq
        elif event.kind in ("exited", "killed"):
            if len(self.ends) == self.ends.maxlen:
                self.ends_from = self.ends[0][0]
            self.ends.append((event.seq, event.domain, event.returncode))
        self.seen = max(self.seen, event.seq)
        if event.kind in ("lost", "exited", "killed"):
            asyncio.ensure_future(self._wake())

    async def _wake(self) -> None:
        async with self._ended:
            self._ended.notify_all()

    async def exits_after(self, seq: int, wait: float) -> tuple:
        """The ends after event ``seq``, waiting up to ``wait`` s for one:
        ("ok", the last seq seen, [(seq, domain, wait's status), ...]); or
        ("lost", the last seq seen) if some after ``seq`` are no longer
        kept (each wait asks again, procmgr/cluster/link.py)."""
        await self._client()
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        while True:
            if seq < self.ends_from:
                return ("lost", self.seen)
            ends = []
            for end in reversed(self.ends):       # from the newest: those after seq
                if end[0] <= seq:
                    break
                ends.append(end)
            if ends or loop.time() >= until:
                return ("ok", self.seen, ends[::-1])
            async with self._ended:
                try:
                    await asyncio.wait_for(self._ended.wait(), until - loop.time())
                except asyncio.TimeoutError:
                    pass

    async def call_many(self, calls: list[tuple]) -> tuple:
        """Several ``call``s at once -- a client's concurrent calls to this
        node, batched (procmgr/cluster/link.py): (the seq of the last event
        seen before any of them ran, each one's answer in order)."""
        await self._client()
        seen = self.seen
        return seen, list(await asyncio.gather(*(self.call(*c) for c in calls)))

    async def hello(self) -> dict:
        """Who this agent is, and how to reach its runtime on this node."""
        await self._client()
        return {"node": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
                "runtime": self.runtime.name, "cores": self.cores,
                "containment": self.runtime.containment_mode}

    async def load(self) -> list[int]:
        """Live domains on each core now."""
        await self._client()
        return list(self.live)

    async def call(self, op: str, *args):
        """One of procmgr/cluster/ops.py's operations on this runtime. Its
        answer, whatever it raised: ("error", ...) for a procmgr error,
        ("raise", type, message) for a TypeError, ValueError or
        OverflowError (bad input: raised again as such by the caller) --
        so that in a batch each call hears its own."""
        pm = await self._client()
        try:
            result = OPS[op](pm, *args)
            if inspect.isawaitable(result):
                result = await result
        except ProcMgmtError as e:
            return ("error", int(e.code), e.detail, e.status)
        except (TypeError, ValueError, OverflowError, KeyError) as e:
            return ("raise", type(e).__name__, str(e))
        return ("ok", result)

    async def ps(self) -> tuple:
        """("ok", a row for each live domain: id, state, cores, pids, argv)."""
        pm = await self._client()
        rows = []
        for ident in await pm.domains():
            try:
                info = await pm.status(ident)
            except ProcMgmtError:
                continue                      # ended and cleaned meanwhile
            rows.append({"id": ident, "state": info.state.name, "cores": info.cores,
                         "pids": info.pids, "argv": info.argv})
        return ("ok", rows)

    async def follow(self, ident: int, nonce: int, stream: str, tail: int | None):
        """``AsyncClient.follow`` here, each piece yielded to the caller as
        it comes (a Ray streaming generator), and ("tick",) after WAIT_SLICE
        s without one -- so that the caller can tell a quiet program from
        an agent gone quiet; a procmgr error ends it as ("error", code,
        detail, status), the last item."""
        pm = await self._client()
        pieces: asyncio.Queue = asyncio.Queue()

        async def pump():
            try:
                async for piece in pm.follow(domain_of(ident, nonce), stream, tail=tail):
                    await pieces.put(("ok", piece))
            except ProcMgmtError as e:
                await pieces.put(("error", int(e.code), e.detail, e.status))
            await pieces.put(None)

        pumping = asyncio.ensure_future(pump())
        try:
            while True:
                try:
                    item = await asyncio.wait_for(pieces.get(), WAIT_SLICE)
                except asyncio.TimeoutError:
                    yield ("tick",)
                    continue
                if item is None:
                    return
                yield item
        finally:
            pumping.cancel()

    async def wait(self, ident: int, nonce: int, slice_: float = WAIT_SLICE):
        """A wait of at most ``slice_`` s: ("ok", status), or ("running",).
        The slices of a long wait share one request to the runtime (one
        per domain), not one each."""
        pm = await self._client()
        key = (ident, nonce)
        end = self._waits.get(key)
        if end is None:
            end = self._waits[key] = asyncio.ensure_future(pm.wait(domain_of(ident, nonce)))
            end.add_done_callback(lambda _: self._waits.pop(key, None))
        try:
            return ("ok", await asyncio.wait_for(asyncio.shield(end), slice_))
        except asyncio.TimeoutError:
            return ("running",)
        except ProcMgmtError as e:
            return ("error", int(e.code), e.detail, e.status)

    def close(self) -> None:
        """End the runtime (every domain killed and reaped); the actor is
        killed by the caller after."""
        if self._counting is not None:
            self._counting.cancel()
        self.runtime.close()


def _remove_dead_runtimes(prefix: str) -> None:
    """The directories of this node's runtimes whose agent died (its
    runtime ended with it, procmgr/osutil.py's remove_dead_runtime_dir:
    only one no live manager holds)."""
    from procmgr.osutil import remove_dead_runtime_dir, runtime_dir
    root = os.path.dirname(runtime_dir("x"))
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(prefix):
            remove_dead_runtime_dir(os.path.join(root, entry))


def _node_cpus(ray, node_id: str) -> int:
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return max(1, int(node.get("Resources", {}).get("CPU", 1)))
    return max(1, len(os.sched_getaffinity(0)))
