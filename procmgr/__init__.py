"""procmgr: a shared-memory multiprocessing runtime modelled on the
Barrelfish process manager. See README.md."""

from procmgr.client import Client, CompletedRun, Domain, DomainInfo
from procmgr.domain import State
from procmgr.errors import (
    CalledProcessError, Err, ProcMgmtError, RuntimeDirUnsafe, RuntimeRefused, TimeoutExpired,
)
from procmgr.logs import DEVNULL, INHERIT, LOG, STDOUT
from procmgr.runtime import Runtime, RuntimeNotFound, connect

__all__ = ["CalledProcessError", "Client", "CompletedRun", "DEVNULL", "Domain", "DomainInfo",
           "Err", "INHERIT", "LOG", "ProcMgmtError", "Runtime", "RuntimeDirUnsafe",
           "RuntimeNotFound", "RuntimeRefused", "STDOUT",
           "State", "TimeoutExpired", "connect"]
