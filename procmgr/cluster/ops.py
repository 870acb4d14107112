"""What a cluster asks of one node's runtime, written once for the three
ways it is asked: by the node's agent with its ``AsyncClient`` (the calls
return awaitables), and by a process on that node itself, through the
rings, with a ``Client`` or an ``AsyncClient`` (procmgr/cluster/__init__.py).
``Client`` and ``AsyncClient`` take the same calls, so one table serves.

Each operation takes the client, then plain values -- what travels
through Ray is picklable and small: a domain goes as (id, nonce)."""

from __future__ import annotations

from procmgr.client.client import Domain
from procmgr.errors import ProcMgmtError


def domain_of(ident: int, nonce: int) -> Domain:
    """The cap a domain travels as (id, nonce), whole again."""
    return Domain(ident, nonce)


OPS = {
    "spawn": lambda pm, argv, core, options: pm.spawn(argv, core=core, **options),
    "wait": lambda pm, ident, nonce, timeout: pm.wait(domain_of(ident, nonce), timeout=timeout),
    "poll": lambda pm, ident, nonce: pm.wait(domain_of(ident, nonce), nohang=True),
    "kill": lambda pm, ident, nonce, sig, grace, timeout: pm.kill(
        domain_of(ident, nonce), timeout=timeout, signal=sig, grace=grace),
    "signal": lambda pm, ident, nonce, sig: pm.signal(domain_of(ident, nonce), sig),
    "status": lambda pm, ident, nonce: pm.status(domain_of(ident, nonce)),
    "output": lambda pm, ident, nonce, stream, tail: pm.output(
        domain_of(ident, nonce), stream, tail=tail),
    "domains": lambda pm: pm.domains(),
}


def answer_of(answer: tuple):
    """What an agent's call answered: ("ok", value) its value, ("error",
    code, detail, status) raised again as that ProcMgmtError, anything
    else (a wait's slice: ("running",)) None."""
    if answer[0] == "ok":
        return answer[1]
    if answer[0] == "error":
        _, code, detail, status = answer
        raise ProcMgmtError(code, detail, status)
    return None
