"""procmgr: a shared-memory multiprocessing runtime modelled on the
Barrelfish process manager. See README.md."""

from procmgr.client import Client, Domain, DomainInfo
from procmgr.domain import State
from procmgr.errors import Err, ProcMgmtError
from procmgr.runtime import Runtime, RuntimeNotFound, connect

__all__ = ["Client", "Domain", "DomainInfo", "Err", "ProcMgmtError", "Runtime",
           "RuntimeNotFound", "State", "connect"]
