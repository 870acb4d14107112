"""procmgr: a shared-memory multiprocessing runtime modelled on the
Barrelfish process manager. See README.md.

The package, by layer (a client talks to the manager, the manager to the
workers, all through rings of protocol messages):

    procmgr.client     the user's side: Runtime, Client, AsyncClient, Domain, output
    procmgr.protocol   the messages, defined once (protocol.h)
    procmgr.manager    the process manager: its C core, loop and server
    spawnd_workers     (beside this package) one worker per core
    procmgr.testing    the control plane in one process, for tests
    ringbuf            (beside this package) the lock-free rings

The names below are loaded when first used, so that a worker importing
``procmgr.protocol`` does not load the client side.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Client": "procmgr.client.client", "CompletedRun": "procmgr.client.client",
    "Domain": "procmgr.client.client", "DomainInfo": "procmgr.client.client",
    "Future": "procmgr.client.client", "ProgramInfo": "procmgr.client.client",
    "State": "procmgr.protocol", "Event": "procmgr.client.events",
    "CalledProcessError": "procmgr.errors", "Err": "procmgr.errors",
    "ProcMgmtError": "procmgr.errors", "RuntimeDirUnsafe": "procmgr.errors",
    "RuntimeGone": "procmgr.errors",
    "RuntimeRefused": "procmgr.errors", "TimeoutExpired": "procmgr.errors",
    "DEVNULL": "procmgr.client.logs", "INHERIT": "procmgr.client.logs",
    "LOG": "procmgr.client.logs", "STDOUT": "procmgr.client.logs",
    "Runtime": "procmgr.client.runtime", "RuntimeNotFound": "procmgr.client.runtime",
    "connect": "procmgr.client.runtime",
    "AsyncClient": "procmgr.client.aio", "aconnect": "procmgr.client.aio",
}
__all__ = sorted(_EXPORTS)


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """A module ``__getattr__`` that imports each of ``exports`` (name ->
    module) when first used and keeps it in ``namespace``."""
    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value
    return __getattr__


__getattr__ = lazy_exports("procmgr", _EXPORTS, globals())


def __dir__():
    return sorted(set(globals()) | set(__all__))
