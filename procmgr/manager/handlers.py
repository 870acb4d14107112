"""The requests the manager answers in Python: queries, add_spawnd, and
the programs' and events' requests (supervisor.py, events.py).

Every other request, and every spawnd reply, is handled in C
(procmgr/manager/core/, mapped in its README.md: one function per message,
the domain state machine, and the defined behaviour for the cases
Barrelfish got wrong, docs/defects.md). These need what Python has --
attaching rings, starting a worker, JSON, timers -- and touch no domain
directly: they read the table's views and answer through the core,
exactly once like every other request.

``handler(mgr, client, msg)``; the core has recorded the request as
outstanding, and answers INTERNAL if a handler raises.
"""

from __future__ import annotations

import json

from procmgr.manager.channel import Channel
from procmgr.errors import Err
from procmgr.protocol import MAX_PAYLOAD, Flag, Op, ProtocolError, StatusInfo, encode_ids
from ringbuf import Ring, RingException


def get_status(mgr, client, msg) -> None:
    dom = mgr.table.by_id(msg.dom)
    if dom is None:
        return mgr.answer(client, msg, Err(mgr.table.missing(msg.dom)))
    info = StatusInfo(int(dom.state), dom.exit_status, dom.signaled, list(dom.cores),
                      [dom.pids[c] for c in dom.cores], dom.argv, dom.killed, dom.started_at,
                      dom.ended_at, dom.usage)
    mgr.answer(client, msg, status=int(dom.state), nonce=0, payload=info.encode())


def get_domainlist(mgr, client, msg) -> None:
    """Ids of domains not cleaned, from ``msg.dom`` on; status 1 if more
    follow (with Flag.ENDED: of the ended domains the history keeps). A
    page costs the manager what is on it: a full listing rebuilt
    for each page took 0.3 s a page at 100,000 live domains, everyone else
    waiting. Under churn the listing is what a walk in id order sees: a
    domain that lives throughout is listed once; one started or ended
    meanwhile may or may not be."""
    if msg.flags & Flag.ENDED:      # the ended ones the history keeps, instead
        page, more = mgr.core.ended_ids_from(msg.dom, MAX_PAYLOAD // 4)
    else:
        page, more = mgr.table.page(msg.dom, MAX_PAYLOAD // 4)
    mgr.answer(client, msg, status=int(more), payload=encode_ids(page))


def get_stats(mgr, client, msg) -> None:
    """Counters for monitoring: per core the send-queue and pending depths and
    the worker's pid; totals of requests answered. A query: changes nothing."""
    cores = {}
    for core, sd in sorted(mgr.spawnds.items()):
        figures = mgr.core.spawnd(core)
        pending = figures["pending"]
        cores[str(core)] = {"sendq": figures["queued"], "pending": len(pending),
                            "pending_capacity": pending.capacity, "sent": figures["sent"],
                            "replies": figures["replies"],
                            "protocol_errors": figures["protocol_errors"]}
    stats = {"cores": cores, "clients": len(mgr.clients), "domains": len(mgr.table),
             "answered": sum(c.answered for c in mgr.clients.values()) + mgr.answered_gone,
             "pending_kind": mgr.pending_kind, "protocol_errors": mgr.protocol_errors,
             "internal_errors": mgr.internal_errors, "peers_dropped": mgr.peers_dropped,
             "workers": mgr.worker_pids()}
    mgr.answer(client, msg, payload=json.dumps(stats).encode()[:MAX_PAYLOAD])


def add_spawnd(mgr, client, msg) -> None:
    """Monitor only. Payload: the spawnd's request and reply ring names, or
    nothing: then the manager starts a worker for the core itself (a
    replacement after a worker died), when it runs as a process."""
    if not client.is_monitor:
        return mgr.answer(client, msg, Err.NOT_MONITOR)
    if mgr.spawnds.get(msg.core) is not None:
        return mgr.answer(client, msg, Err.SPAWND_EXISTS)
    if not msg.payload:
        if mgr.start_spawnd is None:
            return mgr.fail(client, msg, ProtocolError("add_spawnd without ring names"))
        try:
            mgr.start_spawnd(msg.core)
        except OSError as e:
            return mgr.answer(client, msg, Err.INVALID_SPAWND, e.errno or 0,
                              payload=str(e).encode()[:256])
        return mgr.answer(client, msg)
    try:
        req_name, rep_name = msg.payload.decode().split("\0")
        outbound = Ring.attach(req_name)
    except (ValueError, UnicodeDecodeError):
        return mgr.fail(client, msg, ProtocolError("add_spawnd payload is not two ring names"))
    except RingException as e:
        return mgr.answer(client, msg, Err.INVALID_SPAWND, payload=str(e).encode()[:256])
    try:
        inbound = Ring.attach(rep_name)
    except RingException as e:
        outbound.close()
        return mgr.answer(client, msg, Err.INVALID_SPAWND, payload=str(e).encode()[:256])
    err = mgr.add_spawnd(msg.core, Channel(inbound, outbound, f"spawnd.{msg.core}"))
    if err != Err.OK:
        inbound.close()
        outbound.close()
    mgr.answer(client, msg, err)


def program(mgr, client, msg) -> None:
    """A supervised program's request: procmgr/manager/supervisor.py."""
    mgr.supervisor.handle(client, msg)


def events(mgr, client, msg) -> None:
    """The events after a seq: procmgr/manager/events.py."""
    mgr.events.handle(client, msg)


PYTHON_HANDLERS = {
    Op.PROGRAM: program,
    Op.EVENTS: events,
    Op.GET_STATUS: get_status,
    Op.GET_DOMAINLIST: get_domainlist,
    Op.ADD_SPAWND: add_spawnd,
    Op.GET_STATS: get_stats,
}
