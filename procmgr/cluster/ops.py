"""What a cluster asks of one node's runtime, written once for the three
ways it is asked: by the node's agent with its ``AsyncClient`` (the calls
return awaitables), and by a process on that node itself, through the
rings, with a ``Client`` or an ``AsyncClient`` (procmgr/cluster/__init__.py).
``Client`` and ``AsyncClient`` take the same calls, so one table serves.

Each operation takes the client, then plain values -- what travels
through Ray is picklable and small: a domain goes as (id, nonce) -- and
``timeout=`` for the client's call (a caller through the rings bounds
it; the agent's own calls are bounded by its caller)."""

from __future__ import annotations

from procmgr.client.client import Domain
from procmgr.errors import ProcMgmtError


def domain_of(ident: int, nonce: int) -> Domain:
    """The cap a domain travels as (id, nonce), whole again."""
    return Domain(ident, nonce)


OPS = {
    "spawn": lambda pm, argv, core, options, timeout=None: pm.spawn(
        argv, core=core, timeout=timeout, **options),
    "wait": lambda pm, ident, nonce, timeout=None: pm.wait(domain_of(ident, nonce),
                                                            timeout=timeout),
    "poll": lambda pm, ident, nonce, timeout=None: pm.wait(domain_of(ident, nonce), nohang=True,
                                                            timeout=timeout),
    "kill": lambda pm, ident, nonce, sig, grace, kill_timeout, timeout=None: pm.kill(
        domain_of(ident, nonce), timeout=kill_timeout if timeout is None else timeout,
        signal=sig, grace=grace),
    "signal": lambda pm, ident, nonce, sig, timeout=None: pm.signal(
        domain_of(ident, nonce), sig, timeout=timeout),
    "status": lambda pm, ident, nonce, timeout=None: pm.status(domain_of(ident, nonce),
                                                                timeout=timeout),
    "output": lambda pm, ident, nonce, stream, tail, timeout=None: pm.output(
        domain_of(ident, nonce), stream, tail=tail),
    "domains": lambda pm, timeout=None: pm.domains(timeout=timeout),
}


def answer_of(answer: tuple):
    """What an agent's call answered: ("ok", value) its value, ("error",
    code, detail, status) raised again as that ProcMgmtError, ("raise",
    type, message) as that TypeError/ValueError/..., anything else (a
    wait's slice: ("running",)) None."""
    if answer[0] == "ok":
        return answer[1]
    if answer[0] == "error":
        _, code, detail, status = answer
        raise ProcMgmtError(code, detail, status)
    if answer[0] == "raise":                  # bad input, as the runtime said it
        _, kind, message = answer
        raise _RAISED.get(kind, ValueError)(message)
    return None


_RAISED = {e.__name__: e for e in (TypeError, ValueError, OverflowError, KeyError)}
