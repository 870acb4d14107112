"""The cluster's client side: Cluster, AsyncCluster, ClusterDomain, NodeInfo
(procmgr/cluster/__init__.py says what they are for).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as e:                     # pragma: no cover - the extra not installed
    raise ImportError("procmgr.cluster needs Ray: pip install 'procmgr[cluster]'") from e

from procmgr.cluster.agent import NAMESPACE, WAIT_SLICE, NodeAgent, agent_name
from procmgr.client.client import Domain
from procmgr.cluster.link import NodeLink
from procmgr.cluster.ops import OPS, answer_of
from procmgr.errors import Err, ProcMgmtError, RuntimeGone

__all__ = ["AsyncCluster", "Cluster", "ClusterDomain", "NodeInfo", "connect"]

# An agent's answer, at most: beyond a call's own timeout, what Ray may
# take on a loaded machine. A call past it is a TimeoutError.
CALL_SLACK = 30.0
# A new agent: its runtime started and answering.
AGENT_START_TIMEOUT = 120.0
# How old the nodes' loads may be when a spawn is placed.
LOAD_TTL = 0.5
# How long placement waits for the agents' loads.
LOAD_WAIT = 1.0
# How often placement looks for nodes that joined (an agent is started on
# each) or died.
NODES_TTL = 5.0

_AgentActor = None


def _agent_actor():
    global _AgentActor
    if _AgentActor is None:
        _AgentActor = ray.remote(NodeAgent)
    return _AgentActor


@dataclass(frozen=True, slots=True)
class ClusterDomain:
    """A domain of the cluster: its node (Ray's node id), the runtime
    that ran it there, and its cap in that runtime."""

    node: str
    runtime: str
    id: int
    nonce: int
    core: int = 0
    pid: int = 0

    @property
    def token(self) -> str:
        """A string form of it, for another process: ``Cluster.domain``."""
        return f"{self.node}/{self.runtime}/{Domain(self.id, self.nonce).token}"

    @classmethod
    def from_token(cls, token: str) -> ClusterDomain:
        try:
            node, runtime, cap = token.strip().split("/")
            d = Domain.from_token(cap)
        except ValueError:
            raise ValueError(f"{token!r} is not a cluster domain token "
                             f"(NODE/RUNTIME/ID:NONCE)") from None
        return cls(node, runtime, d.id, d.nonce)

    def __str__(self) -> str:
        return self.token


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the cluster sees it: ``alive`` False once it (or its
    agent) died, with ``why``; ``live`` domains per core when it was last
    asked."""

    node: str
    host: str | None
    alive: bool
    runtime: str | None = None
    cores: int = 0
    containment: str | None = None
    live: tuple[int, ...] = ()
    why: str | None = None


class Cluster:
    """One place to spawn, wait, kill and list across the nodes. Made by
    ``connect``; ``close`` disconnects (agents and their domains stay:
    ``down`` ends them)."""

    def __init__(self, address: str = "auto", *, resource: str | None = None,
                 cores: int | None = None, containment: str = "auto",
                 timeout: float = CALL_SLACK, start_agents: bool = True):
        self.resource = resource
        self.cores = cores
        self.containment = containment
        self.slack = timeout
        self._disconnect = False
        if not ray.is_initialized():
            _reachable(address)
            ray.init(address=None if address == "local" else address, namespace=NAMESPACE,
                     logging_level=logging.WARNING, log_to_driver=False)
            self._disconnect = True
        self.here = ray.get_runtime_context().get_node_id()
        self._agents: dict[str, tuple] = {}      # node -> (actor, hello)
        self._dead: dict[str, str] = {}          # node -> why
        self._loads: dict[str, list[int]] = {}
        self._loads_at = 0.0
        self._local = None                       # (runtime name, Client) of this node's
        self._starting: dict[str, tuple] = {}    # node -> (actor, its hello, since)
        self._looked_at = 0.0
        self._lock = threading.Lock()
        self._closed = False
        self.start_agents = start_agents
        self.refresh()

    # ---- nodes ----

    def refresh(self) -> list[NodeInfo]:
        """Ray's nodes now: an agent started on each new one (with the
        resource asked for, if any) and waited for, the dead ones marked.
        The nodes."""
        self._look_for_nodes(wait=True)
        return self.nodes()

    def _look_for_nodes(self, wait: bool) -> None:
        """Agents for the nodes that have none (or whose agent died), and
        the dead marked. Without ``wait`` (a spawn's look, every
        NODES_TTL s) an agent still starting joins at a later look."""
        self._looked_at = time.monotonic()
        for n in ray.nodes():
            node = n["NodeID"]
            if not n["Alive"]:
                if node in self._agents and node not in self._dead:
                    self._died(node, "Ray marked the node dead")
                continue
            if self.resource is not None and self.resource not in n.get("Resources", {}):
                continue
            if (node not in self._agents or node in self._dead) and node not in self._starting:
                if not self.start_agents:     # only those running (procmgr cluster ps, ...)
                    try:
                        actor = ray.get_actor(agent_name(node), namespace=NAMESPACE)
                    except ValueError:
                        continue
                    self._starting[node] = (actor, actor.hello.remote(), time.monotonic())
                    continue
                actor = _agent_actor().options(
                    name=agent_name(node), namespace=NAMESPACE, lifetime="detached",
                    get_if_exists=True, num_cpus=0, max_concurrency=1000,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                ).remote(self.cores, self.containment)
                self._starting[node] = (actor, actor.hello.remote(), time.monotonic())
        for node, (actor, hello, since) in list(self._starting.items()):
            if not wait and not ray.wait([hello], timeout=0)[0] and \
                    time.monotonic() - since < AGENT_START_TIMEOUT:
                continue                      # not yet: the next look
            del self._starting[node]
            try:
                self._agents[node] = (actor, ray.get(hello, timeout=AGENT_START_TIMEOUT))
                self._dead.pop(node, None)
            except (ray.exceptions.RayError, TimeoutError) as e:
                self._agents[node] = (actor, None)
                self._died(node, f"its agent did not start: {_first_line(e)}")

    def nodes(self) -> list[NodeInfo]:
        """Every node with an agent, alive or dead, with its load."""
        loads = self._fresh_loads()
        infos = []
        for node, (_, hello) in self._agents.items():
            hello = hello or {}
            infos.append(NodeInfo(node, hello.get("host"), node not in self._dead,
                                  hello.get("runtime"), hello.get("cores", 0),
                                  hello.get("containment"), tuple(loads.get(node, ())),
                                  self._dead.get(node)))
        return infos

    def _alive(self) -> list[str]:
        return [n for n in self._agents if n not in self._dead]

    def _died(self, node: str, why: str) -> None:
        self._dead[node] = why
        self._loads.pop(node, None)
        if node == self.here and self._local is not None:
            self._local[1].close()
            self._local = None

    def _fresh_loads(self) -> dict[str, list[int]]:
        """Every live agent's load, asked all at once and waited for
        LOAD_WAIT s at most: one that does not answer in time is placed
        by what it said last."""
        if time.monotonic() - self._loads_at > LOAD_TTL:
            nodes = self._alive()
            refs = {self._agents[n][0].load.remote(): n for n in nodes}
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=LOAD_WAIT)
            for ref in ready:
                try:
                    self._loads[refs[ref]] = ray.get(ref)
                except ray.exceptions.ActorDiedError as e:
                    self._died(refs[ref], _first_line(e))
                except ray.exceptions.RayError:
                    pass
            self._loads_at = time.monotonic()
        return self._loads

    def _place(self, node: str | None, core: int | None) -> tuple[str, int]:
        """The node and core of a new domain: the least loaded (live
        domains per core) unless given."""
        if node is None and time.monotonic() - self._looked_at > NODES_TTL:
            self._look_for_nodes(wait=False)      # nodes come and go
        if node is not None and core is not None:
            self._agent(node)
            return node, core                     # nothing to weigh
        loads = self._fresh_loads()
        if node is None:
            alive = [n for n in self._alive() if n in loads]
            if not alive:
                raise ProcMgmtError(Err.NODE_DIED, "no node of the cluster is alive")
            node = min(alive, key=lambda n: (sum(loads[n]) / max(1, len(loads[n])), n))
        self._agent(node)
        if core is None:
            per_core = loads.get(node) or [0]
            core = per_core.index(min(per_core))
        if node in self._loads and 0 <= core < len(self._loads[node]):
            self._loads[node][core] += 1           # until the next look
        return node, core

    def _agent(self, node: str):
        self._check_open()
        if node not in self._agents:
            self.refresh()
        if node not in self._agents:
            raise ValueError(f"no node {node!r} in the cluster "
                             f"(nodes: {', '.join(n[:12] for n in self._agents) or 'none'})")
        if node in self._dead:
            raise ProcMgmtError(Err.NODE_DIED, f"node {node[:12]}: {self._dead[node]}")
        return self._agents[node][0]

    def _runtime_of(self, d: ClusterDomain):
        """d's node's agent, if d's runtime is the one it has now -- asked
        again if not (another client may have started a new agent there)."""
        self._check_open()
        if d.node in self._agents and self._agents[d.node][1] and \
                self._agents[d.node][1]["runtime"] != d.runtime:
            self._greet_again(d.node)
        actor = self._agent(d.node)
        if self._agents[d.node][1]["runtime"] != d.runtime:
            raise ProcMgmtError(Err.NODE_DIED, f"node {d.node[:12]}: its agent was started "
                                f"again; runtime {d.runtime} ended with its domains")
        return actor

    def _greet_again(self, node: str) -> None:
        """node's agent as it is now (found by its name), and its runtime."""
        try:
            actor = ray.get_actor(agent_name(node), namespace=NAMESPACE)
            hello = ray.get(actor.hello.remote(), timeout=self.slack)
        except (ValueError, ray.exceptions.RayError):
            return                            # none, or not answering: as known
        self._agents[node] = (actor, hello)
        self._dead.pop(node, None)

    def _local_client(self, node: str):
        """A Client of node's runtime through its rings, if this process
        runs on that node; None otherwise."""
        if node != self.here:
            return None
        runtime = self._agents[node][1]["runtime"]
        with self._lock:                      # one connection, however many threads ask
            if self._local is not None and self._local[0] != runtime:
                self._local[1].close()        # an agent started again: its new runtime
                self._local = None
            if self._local is None:
                from procmgr.client.runtime import connect as local_connect
                self._local = (runtime, local_connect(runtime))
            return self._local[1]

    # ---- calls ----


    def _failed(self, node: str, e: BaseException, waited: float) -> Exception:
        """What a call to node's agent that raised ``e`` raises: NODE_DIED
        for an agent that died (the node marked dead) or cannot be
        reached; TimeoutError for no answer within ``waited`` s."""
        if isinstance(e, (ray.exceptions.GetTimeoutError, asyncio.TimeoutError)):
            return TimeoutError(f"node {node[:12]} did not answer within {waited:g} s")
        if isinstance(e, ray.exceptions.ActorDiedError):
            self._died(node, f"its agent died: {_first_line(e)}")
            return ProcMgmtError(Err.NODE_DIED, f"node {node[:12]}: {self._dead[node]}")
        return ProcMgmtError(Err.NODE_DIED, f"node {node[:12]}: its agent cannot be reached: "
                             f"{_first_line(e)}")

    def _remote(self, node: str, actor, method: str, *args, timeout: float | None = None):
        waited = (timeout or 0) + self.slack
        try:
            answer = ray.get(getattr(actor, method).remote(*args), timeout=waited)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            raise self._failed(node, e, waited) from None
        return answer_of(answer)

    def _slices(self, d: ClusterDomain, timeout: float | None):
        """The lengths of a wait's slices on another node, until
        ``timeout`` (TimeoutError then)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"domain {d.id} on node {d.node[:12]} still runs "
                                   f"after {timeout} s")
            yield left

    def _bound(self, op: str, timeout: float | None) -> float | None:
        """How long a call on this node's runtime may take: its own
        timeout and the slack -- but a wait's is its own (None: until the
        domain ends)."""
        return timeout if op == "wait" else (timeout or 0) + self.slack

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Cluster is closed: procmgr.cluster.connect() again")

    def _made(self, node: str, d) -> ClusterDomain:
        return ClusterDomain(node, self._agents[node][1]["runtime"], d.id, d.nonce, d.core, d.pid)

    def _op(self, d: ClusterDomain, op: str, *args, timeout: float | None = None):
        actor = self._runtime_of(d)
        pm = self._local_client(d.node)
        if pm is not None:
            try:
                return OPS[op](pm, d.id, d.nonce, *args, timeout=self._bound(op, timeout))
            except RuntimeGone as e:
                self._died(d.node, f"its runtime went away: {e}")
                raise ProcMgmtError(Err.NODE_DIED, f"node {d.node[:12]}: {e}") from None
        return self._remote(d.node, actor, "call", op, d.id, d.nonce, *args, timeout=timeout)

    def spawn(self, argv, *, node: str | None = None, core: int | None = None,
              timeout: float | None = None, **options) -> ClusterDomain:
        """Start ``argv`` on ``node``'s ``core`` -- each the least loaded
        if None -- with ``Client.spawn``'s options (env, cwd, stdout, limits,
        ...: they are applied on that node)."""
        argv = _argv(argv)
        node, core = self._place(node, core)
        actor = self._agent(node)
        pm = self._local_client(node)
        if pm is not None:
            return self._made(node, OPS["spawn"](pm, argv, core, options,
                                                 timeout=self._bound("spawn", timeout)))
        return self._made(node, self._remote(node, actor, "call", "spawn", argv, core, options,
                                             timeout=timeout))

    def wait(self, d: ClusterDomain, timeout: float | None = None) -> int:
        """Its exit status, as ``Client.wait`` (9: killed). A wait on
        another node is asked in slices of WAIT_SLICE s, so that a node that
        stops answering is found out (NODE_DIED, or TimeoutError)."""
        d = self.domain(d)
        actor = self._runtime_of(d)
        if timeout is not None and timeout <= 0:      # asked once, not waited for
            status = self._op(d, "poll")
            if status is None:
                raise TimeoutError(f"domain {d.id} on node {d.node[:12]} still runs")
            return status
        if self._local_client(d.node) is not None:
            return self._op(d, "wait", timeout=timeout)
        for left in self._slices(d, timeout):
            status = self._remote(d.node, actor, "wait", d.id, d.nonce, left, timeout=left)
            if status is not None:
                return status

    def kill(self, d: ClusterDomain, timeout: float | None = None, *, signal=None,
             grace: float | None = None) -> None:
        """As ``Client.kill``: answered once all of it is gone."""
        d = self.domain(d)
        return self._op(d, "kill", signal, grace, timeout,
                        timeout=None if timeout is None and grace is None
                        else (timeout or 0) + (grace or 0))

    def signal(self, d: ClusterDomain, sig) -> None:
        """As ``Client.signal``."""
        return self._op(self.domain(d), "signal", int(sig))

    def status(self, d: ClusterDomain):
        """Its ``DomainInfo``, as ``Client.status``."""
        return self._op(self.domain(d), "status")

    def output(self, d: ClusterDomain, stream: str = "stdout", *, tail: int | None = None) -> bytes:
        """What it wrote to ``stream`` (captured: ``stdout=procmgr.LOG``,
        the default), read on its node."""
        return self._op(self.domain(d), "output", stream, tail)

    def follow(self, d: ClusterDomain, stream: str = "stdout", *,
               tail: int | None = None) -> Iterator[bytes]:
        """``output`` and then each new piece as it is written, until the
        domain has ended and all it wrote was yielded (``Client.follow``),
        from its node: each piece comes as Ray streams a generator's items.
        A node that dies ends it with NODE_DIED."""
        d = self.domain(d)
        actor = self._runtime_of(d)
        pm = self._local_client(d.node)
        if pm is not None:
            yield from pm.follow(Domain(d.id, d.nonce), stream, tail=tail)
            return
        pieces = actor.follow.options(num_returns="streaming").remote(
            d.id, d.nonce, stream, tail)
        while True:
            try:
                ref = next(pieces)
                answer = ray.get(ref, timeout=self.slack + WAIT_SLICE)
            except StopIteration:
                return
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
                raise self._failed(d.node, e, self.slack) from None
            piece = answer_of(answer)
            if piece is not None:                 # not a tick: the agent says it is there
                yield piece

    def domains(self) -> list[tuple[str, int]]:
        """(node, id) of every live domain of every live node."""
        out = []
        for node in self._alive():
            try:
                ids = self._remote(node, self._agents[node][0], "call", "domains")
            except ProcMgmtError:
                continue                          # died meanwhile: none alive there
            out += [(node, i) for i in ids]
        return out

    def ps(self) -> list[dict]:
        """A row per live domain of every node, with its node; a dead
        node's a row saying so."""
        rows = []
        for info in self.refresh():
            if not info.alive:
                rows.append({"node": info.node[:12], "host": info.host, "state": "NODE_DIED",
                             "why": info.why})
                continue
            try:
                got = self._remote(info.node, self._agents[info.node][0], "ps")
            except ProcMgmtError as e:
                rows.append({"node": info.node[:12], "host": info.host, "state": "NODE_DIED",
                             "why": e.detail})
                continue
            rows += [{"node": info.node[:12], "host": info.host, **row} for row in got]
        return rows

    def domain(self, d) -> ClusterDomain:
        """A ClusterDomain from itself or its token."""
        if isinstance(d, ClusterDomain):
            return d
        if isinstance(d, str):
            return ClusterDomain.from_token(d)
        raise TypeError(f"a ClusterDomain or its token, not {type(d).__name__}")

    def aio(self) -> AsyncCluster:
        """The same calls, as coroutines, for asyncio."""
        return AsyncCluster(self)

    # ---- the end ----

    def down(self) -> None:
        """End every agent: each node's runtime closes (its domains killed
        and reaped), then the agent."""
        self._check_open()
        for node, (actor, _) in list(self._agents.items()):
            if node in self._dead:
                continue
            try:
                ray.get(actor.close.remote(), timeout=self.slack)
            except (ray.exceptions.RayError, TimeoutError):
                pass                          # dead already: its runtime ended with it
            ray.kill(actor)
            self._died(node, "stopped (procmgr cluster down)")

    def close(self) -> None:
        """Disconnect from the cluster; agents and domains stay."""
        self._closed = True
        if self._local is not None:
            self._local[1].close()
            self._local = None
        if self._disconnect and ray.is_initialized():
            ray.shutdown()
        self._disconnect = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncCluster:
    """``Cluster``'s calls as coroutines. One to this node's runtime goes
    through its rings with an ``AsyncClient``; those to another node are
    batched, and its waits share one stream of ends
    (procmgr/cluster/link.py): many concurrent spawns and waits cost few
    actor calls."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._local = None
        self._links: dict[str, NodeLink] = {}

    async def _local_client(self, node: str):
        if node != self.cluster.here:
            return None
        runtime = self.cluster._agents[node][1]["runtime"]
        if self._local is not None and self._local[0] != runtime:
            self._drop_local()                # an agent started again: its new runtime
        if self._local is None:           # one connection, however many calls await it
            from procmgr.client.aio import aconnect
            self._local = (runtime, asyncio.ensure_future(aconnect(runtime)))
        return await self._local[1]

    def _drop_local(self) -> None:
        pending = self._local[1]
        if pending.done() and not pending.cancelled() and not pending.exception():
            pending.result().close()
        self._local = None

    def _link(self, node: str) -> NodeLink:
        """The link to node's agent as it is now (a new agent, a new link:
        its runtime's seqs and ids start again)."""
        runtime = self.cluster._agents[node][1]["runtime"]
        link = self._links.get(node)
        if link is None or link.runtime != runtime:
            actor = self.cluster._agent(node)

            async def send(method: str, *args, timeout=None):
                waited = (timeout or 0) + self.cluster.slack
                try:
                    return await asyncio.wait_for(getattr(actor, method).remote(*args), waited)
                except (asyncio.TimeoutError, ray.exceptions.RayActorError) as e:
                    raise self.cluster._failed(node, e, waited) from None

            link = self._links[node] = NodeLink(node, send, runtime)
        return link

    async def _call(self, node: str, *call, timeout=None, alone=False):
        """A call on node's agent, batched (``alone``: in a batch of its
        own -- a kill's grace holds up no spawn): (seq seen before it,
        its value)."""
        self.cluster._agent(node)             # NODE_DIED at once for a dead node
        seq, answer = await self._link(node).call(*call, timeout=timeout, alone=alone)
        return seq, answer_of(answer)

    async def _op(self, d: ClusterDomain, op: str, *args, timeout=None):
        c = self.cluster
        c._runtime_of(d)
        pm = await self._local_client(d.node)
        if pm is not None:
            try:
                return await OPS[op](pm, d.id, d.nonce, *args, timeout=c._bound(op, timeout))
            except RuntimeGone as e:
                c._died(d.node, f"its runtime went away: {e}")
                raise ProcMgmtError(Err.NODE_DIED, f"node {d.node[:12]}: {e}") from None
        return (await self._call(d.node, op, d.id, d.nonce, *args, timeout=timeout,
                                 alone=op == "kill"))[1]

    async def spawn(self, argv, *, node=None, core=None, timeout=None, **options):
        """As ``Cluster.spawn``."""
        c = self.cluster
        argv = _argv(argv)
        node, core = c._place(node, core)
        c._agent(node)
        pm = await self._local_client(node)
        if pm is not None:
            return c._made(node, await OPS["spawn"](pm, argv, core, options,
                                                    timeout=c._bound("spawn", timeout)))
        _, d = await self._call(node, "spawn", argv, core, options, timeout=timeout)
        return c._made(node, d)

    async def wait(self, d, timeout=None) -> int:
        """As ``Cluster.wait``."""
        d = self.cluster.domain(d)
        self.cluster._runtime_of(d)
        if await self._local_client(d.node) is not None:
            return await self._op(d, "wait", timeout=timeout)
        seq, status = await self._call(d.node, "poll", d.id, d.nonce)
        if status is not None:
            return status
        link = self._link(d.node)
        end = link.end_of(d.id, d.nonce, seq)
        try:
            return await asyncio.wait_for(asyncio.shield(end), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"domain {d.id} on node {d.node[:12]} still runs "
                               f"after {timeout} s") from None
        finally:                              # given up (a timeout, a cancel): forgotten
            if not end.done():
                link.forget(d.id, end)
                end.cancel()

    async def kill(self, d, timeout=None, *, signal=None, grace=None) -> None:
        """As ``Cluster.kill``."""
        return await self._op(self.cluster.domain(d), "kill", signal, grace, timeout,
                              timeout=None if timeout is None and grace is None
                              else (timeout or 0) + (grace or 0))

    async def signal(self, d, sig) -> None:
        """As ``Cluster.signal``."""
        return await self._op(self.cluster.domain(d), "signal", int(sig))

    async def status(self, d):
        """As ``Cluster.status``."""
        return await self._op(self.cluster.domain(d), "status")

    async def output(self, d, stream="stdout", *, tail=None) -> bytes:
        """As ``Cluster.output``."""
        return await self._op(self.cluster.domain(d), "output", stream, tail)

    async def follow(self, d, stream="stdout", *, tail=None):
        """As ``Cluster.follow``: ``async for piece in acluster.follow(d)``."""
        d = self.cluster.domain(d)
        actor = self.cluster._runtime_of(d)
        pm = await self._local_client(d.node)
        if pm is not None:
            async for piece in pm.follow(Domain(d.id, d.nonce), stream, tail=tail):
                yield piece
            return
        pieces = actor.follow.options(num_returns="streaming").remote(d.id, d.nonce, stream,
                                                                    tail)
        waited = self.cluster.slack + WAIT_SLICE
        while True:
            try:
                answer = await asyncio.wait_for(_next_of(pieces), waited)
            except StopAsyncIteration:
                return
            except (asyncio.TimeoutError, ray.exceptions.RayActorError) as e:
                raise self.cluster._failed(d.node, e, waited) from None
            piece = answer_of(answer)
            if piece is not None:                 # not a tick: the agent says it is there
                yield piece

    def close(self) -> None:
        """The local connection closed; links to other nodes dropped (a
        new event loop may use this again)."""
        if self._local is not None:
            self._drop_local()
        self._links = {}


def connect(address: str = "auto", *, resource: str | None = None, cores: int | None = None,
            containment: str = "auto", timeout: float = CALL_SLACK,
            start_agents: bool = True) -> Cluster:
    """Join the Ray cluster at ``address`` ("auto": the one running on
    this machine, as ``ray.init`` finds it; "local": start one here, for
    this process's life) -- or use the one this process joined already --
    and make sure every node (with ``resource``, if named) runs an agent
    with a runtime of ``cores`` (None: the node's CPUs as Ray counts
    them); an agent running already keeps its own. ``start_agents=False``
    only finds the agents running (what `procmgr cluster ps` does)."""
    return Cluster(address, resource=resource, cores=cores, containment=containment,
                   timeout=timeout, start_agents=start_agents)


async def _next_of(pieces):
    """The next item a Ray streaming generator yields."""
    return await (await pieces.__anext__())


def _reachable(address: str) -> None:
    """A HOST:PORT address answers a TCP connection within 5 s, or
    ConnectionError saying so -- before Ray tries it for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return                                    # "auto", "local", ray://: Ray's to judge
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address}: {e}") from None


def _argv(argv) -> list:
    """argv as a list (it travels to another node: not a generator), or
    TypeError for one string, as Client.spawn refuses it; the node's
    runtime checks the rest."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv is a list of arguments, not one string "
                        "(as Client.spawn: [program, arg, ...])")
    return list(argv)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
