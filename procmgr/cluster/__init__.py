"""procmgr beyond one machine: a runtime on every node of a Ray cluster,
placed and reached through Ray (docs/cluster.md).

    cluster = procmgr.cluster.connect("auto")     # or an address, or "local"
    d = cluster.spawn(["./job", "--part", "3"])    # least loaded node and core
    cluster.wait(d)                                # from any process: d.token
    cluster.ps()

Ray gives membership, placement, failure detection and transport; each
node runs one agent (procmgr/cluster/agent.py), a Ray actor that owns a
normal runtime of that node's cores. A call on a domain goes to its
node's agent -- unless the caller runs on that node, when it goes
through the runtime's rings as any client's would, Ray not in the way.

What differs from ``procmgr.Client``, and why:
- a domain is a ``ClusterDomain``: its node and that node's runtime are
  part of it, and of its token;
- ``spawn(node=None, core=None)`` places (``Client.spawn``'s core is 0 by
  default: one runtime has no idea of load to go by; here placement is
  the point);
- a domain whose node died, or whose node's agent ended (its runtime and
  domains end with it), is ``ProcMgmtError`` NODE_DIED for every call,
  a wait in progress included -- within Ray's failure detection;
- every call is bounded: an agent that does not answer within its
  timeout is a TimeoutError naming the node, never a hang.

Asyncio: ``cluster.aio()`` gives the same calls as coroutines.
"""

from __future__ import annotations

from procmgr import lazy_exports

_EXPORTS = {
    "AsyncCluster": "procmgr.cluster.cluster", "Cluster": "procmgr.cluster.cluster",
    "ClusterDomain": "procmgr.cluster.cluster", "NodeInfo": "procmgr.cluster.cluster",
    "connect": "procmgr.cluster.cluster",
}
__all__ = sorted(_EXPORTS)
# Ray is imported with the first of these used (procmgr/cluster/cli.py
# builds its parser without it).
__getattr__ = lazy_exports("procmgr.cluster", _EXPORTS, globals())
