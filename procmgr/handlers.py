"""One short function per message, and the tables that route to them.

Client requests: ``handler(mgr, client, msg)``; every path answers the
request exactly once, now or later (a later answer is owned by a pending
slot, a domain's waiters/killers, or its deferred list).

Spawnd replies: ``handler(mgr, sd, slot, msg)``, called between the pending
structure's ``match`` and ``release`` (see pending.py for why).

Defined behaviour for the cases Barrelfish got wrong (BARRELFISH.md §5):
- kill or exit of a NIL domain, or a dispatcher's exit report, that overtook
  the spawn reply (defect 15): deferred until the reply, then carried out;
  if the spawn failed, answered with its error (as is a wait, then or later);
- kill of a STOP_PEND domain (concurrent killers, or a kill racing the
  domain's own exit, defect 11): the killer is answered OK when it stops;
- kill or exit of a STOPPED/CLEANED domain (defect 10): DOMAIN_NOT_RUNNING,
  and the recorded exit status is kept;
- a kill reply counts a core once, however the stop is reported (sets, not
  counters); a failed kill answers every killer with the error and puts the
  domain back to RUNNING, so its own exit still counts (defect 12);
- exit is answered (defect 13); wait on STOPPED or CLEANED answers at once
  (defect 8); nohang never overwrites the exit status;
- span is answered once, after the spawnd's reply (defect 4), and recorded
  so kill and cleanup reach the new core (defect 5); a span to a core the
  domain already has, or is being spanned to, is ALREADY_SPANNED.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback

from procmgr.channel import Channel
from procmgr.domain import NIL, RUNNING, STOP_PEND, Domain
from procmgr.errors import Err
from procmgr.manager import AnswerTwice
from procmgr.protocol import (
    MAX_PAYLOAD, Flag, Msg, Op, ProtocolError, SpawnArgs, StatusInfo, encode_ids,
)
from ringbuf import Ring, RingException

# ---- client requests -------------------------------------------------------


def _domain(mgr, client, msg) -> Domain | None:
    """Look up the cap a request carries; answer the error if it is bad."""
    dom = mgr.table.lookup(msg.dom, msg.nonce)
    if isinstance(dom, Err):
        mgr.answer(client, msg, dom)
        return None
    return dom


# A client spawning one program many times sends the same payload bytes
# each time: decoding them once saves most of a spawn's cost here. The
# SpawnArgs it returns is shared: read it, never change it (the table keeps
# its own copy of argv). A payload that does not decode raises, and is not
# remembered.
_spawn_args = functools.lru_cache(maxsize=256)(SpawnArgs.decode)


def spawn(mgr, client, msg) -> None:
    try:
        args = _spawn_args(msg.payload)
    except ProtocolError as e:
        return mgr.fail(client, msg, e)
    if args.caps and msg.op == Op.SPAWN:
        return mgr.fail(client, msg, ProtocolError("spawn carries caps: use spawn_with_caps"))
    sd = mgr.spawnd(msg.core)
    if sd is None:
        return mgr.answer(client, msg, Err.INVALID_SPAWND)
    if mgr.table.full():
        return mgr.answer(client, msg, Err.CREATE_DOMAIN_CAP)
    dom = mgr.table.create(args.argv, msg.core, msg.payload)
    sd.send(Msg(Op.SD_SPAWN, core=msg.core, dom=dom.id, nonce=dom.nonce, payload=msg.payload),
            client, msg.seq, extra=msg.op)


def span(mgr, client, msg) -> None:
    dom = _domain(mgr, client, msg)
    if dom is None:
        return
    if dom.state != RUNNING:
        return mgr.answer(client, msg, Err.DOMAIN_NOT_RUNNING)
    # Every core it ever ran on, not only those holding it: a core whose
    # dispatcher ended and released it (Flag.RELEASED) is not spanned to again.
    if msg.core in dom.cores or msg.core in dom.span_pending:
        return mgr.answer(client, msg, Err.ALREADY_SPANNED)
    sd = mgr.spawnd(msg.core)
    if sd is None:
        return mgr.answer(client, msg, Err.INVALID_SPAWND)
    # Counted as running from now on, so a kill sent meanwhile also goes to
    # this core -- after the span in that spawnd's order, so it finds it.
    dom.span_pending.add(msg.core)
    dom.live.add(msg.core)
    sd.send(Msg(Op.SD_SPAN, core=msg.core, dom=dom.id, nonce=dom.nonce,
                payload=dom.spawn_payload), client, msg.seq)


def kill(mgr, client, msg) -> None:
    dom = _domain(mgr, client, msg)
    if dom is None:
        return
    if dom.state == NIL:
        dom.deferred.append((Op.KILL, client, msg.seq, 9, False))
    elif dom.state == RUNNING:
        dom.killers.append((client, msg.seq))
        mgr.begin_stop(dom, 9)
    elif dom.state == STOP_PEND:
        dom.killers.append((client, msg.seq))   # answered when it has stopped
    else:
        mgr.answer(client, msg, Err.DOMAIN_NOT_RUNNING)


def exit_(mgr, client, msg) -> None:
    """The domain itself says it exits with ``msg.status``; acknowledged at once."""
    dom = _domain(mgr, client, msg)
    if dom is None:
        return
    if dom.state == NIL:
        dom.deferred.append((Op.EXIT, None, 0, msg.status, False))
    elif dom.state == RUNNING:
        mgr.begin_stop(dom, msg.status)
    else:
        return mgr.answer(client, msg, Err.DOMAIN_NOT_RUNNING)
    mgr.answer(client, msg)


def wait(mgr, client, msg) -> None:
    dom = _domain(mgr, client, msg)
    if dom is None:
        return
    if dom.spawn_error is not None:
        err, status = dom.spawn_error
        mgr.answer(client, msg, err, status=status)
    elif dom.finished:
        mgr.answer(client, msg, status=dom.exit_status,
                   flags=Flag.SIGNALED if dom.signaled else 0)
    elif msg.flags & Flag.NOHANG:
        mgr.answer(client, msg, flags=Flag.STILL_RUNNING)
    else:
        dom.waiters.append((client, msg.seq))


def get_status(mgr, client, msg) -> None:
    dom = mgr.table.by_id(msg.dom)
    if dom is None:
        return mgr.answer(client, msg, Err.DOMAIN_TABLE_FIND)
    info = StatusInfo(int(dom.state), dom.exit_status, dom.signaled, list(dom.cores),
                      [dom.pids[c] for c in dom.cores], dom.argv)
    mgr.answer(client, msg, status=int(dom.state), nonce=0, payload=info.encode())


def get_domainlist(mgr, client, msg) -> None:
    """Ids of domains not cleaned, from ``msg.dom`` on; status 1 if more follow."""
    per_page = MAX_PAYLOAD // 4
    ids = [i for i in mgr.table.ids() if i >= msg.dom]
    page, more = ids[:per_page], len(ids) > per_page
    mgr.answer(client, msg, status=int(more), payload=encode_ids(page))


def get_stats(mgr, client, msg) -> None:
    """Counters for monitoring: per core the send-queue and pending depths and
    the worker's pid; totals of requests answered. A query: changes nothing."""
    cores = {
        str(core): {"sendq": sd.queued, "pending": len(sd.pending),
                    "pending_capacity": sd.pending.capacity, "sent": sd.sent,
                    "replies": sd.replies, "protocol_errors": sd.protocol_errors}
        for core, sd in sorted(mgr.spawnds.items())
    }
    stats = {"cores": cores, "clients": len(mgr.clients), "domains": len(mgr.table),
             "answered": sum(c.answered for c in mgr.clients.values()) + mgr.answered_gone,
             "pending_kind": mgr.pending_kind, "protocol_errors": mgr.protocol_errors,
             "internal_errors": mgr.internal_errors, "workers": mgr.worker_pids()}
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


CLIENT_HANDLERS = {
    Op.SPAWN: spawn,
    Op.SPAWN_WITH_CAPS: spawn,
    Op.SPAN: span,
    Op.KILL: kill,
    Op.EXIT: exit_,
    Op.WAIT: wait,
    Op.GET_STATUS: get_status,
    Op.GET_DOMAINLIST: get_domainlist,
    Op.ADD_SPAWND: add_spawnd,
    Op.GET_STATS: get_stats,
}


def dispatch_client(mgr, client, msg) -> None:
    """Route one decoded client message (or decode error) to its handler."""
    client.received += 1
    if isinstance(msg, ProtocolError):
        mgr.protocol_errors += 1
        # Answerable when the header told us who asked; a bare garbage slot
        # has no request to answer, and is only counted.
        if msg.op and msg.seq and msg.seq not in client.outstanding:
            client.outstanding.add(msg.seq)
            # An op the client's decoder would refuse too cannot be echoed.
            op = msg.op if msg.op in CLIENT_HANDLERS else Op.UNREADABLE
            mgr.answer_seq(client, op, msg.seq, msg.code, payload=msg.detail.encode()[:256])
        return
    if msg.seq in client.outstanding:
        mgr.protocol_errors += 1  # a second request under a seq still pending
        return
    client.outstanding.add(msg.seq)
    handler = CLIENT_HANDLERS.get(msg.op)
    if handler is None or msg.is_reply:
        return mgr.answer(client, msg, Err.UNKNOWN_OP)
    try:
        handler(mgr, client, msg)
    except AnswerTwice:
        raise
    except Exception:
        # A bug must not take the manager, and everyone else's answers, down:
        # report it, answer this request if it still waits, carry on.
        mgr.internal_errors += 1
        traceback.print_exc(file=sys.stderr)
        if msg.seq in client.outstanding:
            mgr.answer(client, msg, Err.INTERNAL)


# ---- spawnd replies ----------------------------------------------------------


def spawn_reply(mgr, sd, slot, msg) -> None:
    dom = mgr.table.by_id(slot.dom)
    client_op = slot.extra
    if msg.err != Err.OK:
        mgr.answer_seq(slot.client, client_op, slot.client_seq, msg.err, status=msg.status,
                       core=sd.core, payload=msg.payload)
        _spawn_never_ran(mgr, dom, msg.err, msg.status)
        return
    mgr.table.dispatcher_started(dom, sd.core, msg.status)
    mgr.answer_seq(slot.client, client_op, slot.client_seq, status=msg.status,
                   dom=dom.id, nonce=dom.nonce, core=sd.core)
    deferred, dom.deferred = dom.deferred, []
    for op, client, seq, status, signaled in deferred:
        if op == Op.SD_EXIT:
            mgr.table.dispatcher_stopped(dom, sd.core)
        if op == Op.KILL:
            dom.killers.append((client, seq))   # answered at STOPPED
        if dom.state == RUNNING:
            mgr.begin_stop(dom, status, signaled)
        else:
            mgr.maybe_stopped(dom)


def _spawn_never_ran(mgr, dom, err, status) -> None:
    """Whoever waited on a domain whose spawn failed gets the spawn's error."""
    for op, client, seq, *_ in dom.deferred:
        if client is not None:
            mgr.answer_seq(client, op, seq, err, status=status, dom=dom.id, nonce=dom.nonce)
    for client, seq in dom.waiters:
        mgr.answer_seq(client, Op.WAIT, seq, err, status=status, dom=dom.id, nonce=dom.nonce)
    dom.deferred, dom.waiters = [], []
    mgr.table.spawn_failed(dom, err, status)


def span_reply(mgr, sd, slot, msg) -> None:
    dom = mgr.table.by_id(slot.dom)
    dom.span_pending.discard(sd.core)
    if msg.err == Err.OK:
        dom.cores.append(sd.core)
        dom.pids[sd.core] = msg.status
        dom.held.add(sd.core)
        mgr.answer_seq(slot.client, Op.SPAN, slot.client_seq, status=msg.status,
                       dom=dom.id, nonce=dom.nonce, core=sd.core)
    else:
        dom.live.discard(sd.core)
        mgr.answer_seq(slot.client, Op.SPAN, slot.client_seq, msg.err, status=msg.status,
                       dom=dom.id, nonce=dom.nonce, core=sd.core)
        mgr.maybe_stopped(dom)


# A kill reply saying the dispatcher is gone: killed, or NOT_FOUND (it had
# exited already), or SPAWND_DIED (it died with its worker).
_KILL_DONE = frozenset((Err.OK, Err.NOT_FOUND, Err.SPAWND_DIED))


def kill_reply(mgr, sd, slot, msg) -> None:
    dom = mgr.table.by_id(slot.dom)
    dom.kills_in_flight -= 1
    if msg.err in _KILL_DONE:
        mgr.table.dispatcher_stopped(dom, sd.core)
        if msg.flags & Flag.RELEASED:
            mgr.table.dispatcher_released(dom, sd.core)
    else:
        dom.kill_error = (msg.err, msg.status)
    if not dom.live:
        return mgr.maybe_stopped(dom)
    if dom.kills_in_flight == 0 and dom.kill_error:
        # It still runs somewhere: not stopped. Every killer hears why, and
        # the domain is RUNNING again (its own exit, or a new kill, counts).
        err, status = dom.kill_error
        killers, dom.killers = dom.killers, []
        for client, seq in killers:
            mgr.answer_seq(client, Op.KILL, seq, err, status=status,
                           dom=dom.id, nonce=dom.nonce)
        if dom.state == STOP_PEND:
            mgr.table.stop_failed(dom)


def cleanup_reply(mgr, sd, slot, msg) -> None:
    dom = mgr.table.by_id(slot.dom)
    if dom is not None:
        mgr.table.dispatcher_cleaned(dom, sd.core)


# The client request each spawnd request serves (spawn keeps its own in extra).
_CLIENT_OP = {Op.SD_SPAWN: Op.SPAWN, Op.SD_SPAN: Op.SPAN, Op.SD_KILL: Op.KILL,
              Op.SD_CLEANUP: Op.KILL}

REPLY_HANDLERS = {
    Op.SD_SPAWN: spawn_reply,
    Op.SD_SPAN: span_reply,
    Op.SD_KILL: kill_reply,
    Op.SD_CLEANUP: cleanup_reply,
}


def fail_pending(mgr, sd, slot, err: Err) -> None:
    """A request that will never get its reply: answer as if it failed."""
    REPLY_HANDLERS[slot.op](mgr, sd, slot, Msg(slot.op, slot.seq, dom=slot.dom, err=int(err)))


def dispatcher_exit(mgr, sd, msg) -> None:
    """SD_EXIT: a dispatcher of ``msg.dom`` on this core ended by itself."""
    dom = mgr.table.by_id(msg.dom)
    if dom is None or dom.nonce != msg.nonce:
        mgr.protocol_errors += 1
        return
    signaled = bool(msg.flags & Flag.SIGNALED)
    if dom.state == NIL:
        # Overtook its own spawn reply (a worker that reports out of order):
        # counted once the reply has made it a running dispatcher.
        dom.deferred.append((Op.SD_EXIT, None, 0, msg.status, signaled))
        return
    if not mgr.table.dispatcher_stopped(dom, sd.core):
        return              # a kill reply already counted this core
    if msg.flags & Flag.RELEASED:
        mgr.table.dispatcher_released(dom, sd.core)
    if dom.state == RUNNING:
        if sd.core == dom.home_core or not dom.live:
            mgr.begin_stop(dom, msg.status, signaled)
        # else: a spanned dispatcher ended; the domain runs on elsewhere
    else:
        mgr.maybe_stopped(dom)


def dispatch_spawnd(mgr, sd, msg) -> None:
    """Route one message from a spawnd: a reply (matched) or an exit report."""
    if isinstance(msg, ProtocolError):
        sd.protocol_errors += 1
        return
    if msg.op == Op.SD_EXIT:
        return dispatcher_exit(mgr, sd, msg)
    if not msg.is_reply or msg.op not in REPLY_HANDLERS:
        sd.protocol_errors += 1
        return
    slot, lost = sd.pending.match(msg.seq, msg.op, msg.dom)
    for old in lost:   # their replies never came: fail them loudly, in order
        fail_pending(mgr, sd, old, Err.REPLY_OUT_OF_ORDER)
        sd.pending.release(old)
        sd.protocol_errors += 1
    if slot is None:
        sd.protocol_errors += 1   # duplicate, stale or unknown reply
        return
    sd.replies += 1
    try:
        REPLY_HANDLERS[msg.op](mgr, sd, slot, msg)
    except AnswerTwice:
        raise
    except Exception:
        mgr.internal_errors += 1
        traceback.print_exc(file=sys.stderr)
        if slot.client is not None and slot.client_seq in slot.client.outstanding:
            mgr.answer_seq(slot.client, slot.extra or _CLIENT_OP[msg.op], slot.client_seq,
                           Err.INTERNAL)
    finally:
        sd.pending.release(slot)
    # The slot freed here lets a queued request go: poll flushes each
    # spawnd's send queue after its batch of replies.
