"""Error codes of the process manager, and the exception clients see.

Codes travel in the 16-bit ``err`` field of every message. Names taken from
Barrelfish's PROC_MGMT_ERR_* keep their meaning; the rest are what a runtime
of real processes and shared-memory rings needs on top.
"""

from __future__ import annotations

import errno as _errno
import os
import subprocess
from enum import IntEnum


class Err(IntEnum):
    OK = 0
    # -- from the original interface (PROC_MGMT_ERR_*) --
    INVALID_SPAWND = 1        # no spawnd serves that core
    CREATE_DOMAIN_CAP = 2     # the domain table is full
    DOMAIN_CAP_HASH = 3       # (original: cap identify failed) kept for numbering
    DOMAIN_TABLE_FIND = 4     # no domain with that id
    DOMAIN_NOT_RUNNING = 5    # span/kill/exit of a domain that is not RUNNING
    ALREADY_SPANNED = 6       # the domain already runs on that core
    SPAWND_EXISTS = 7         # add_spawnd for a core that has one
    NOT_MONITOR = 8           # add_spawnd from a binding that is not the monitor
    CLIENTS_TABLE_FIND = 9    # hashtable strategy: a reply matched no pending client
    # -- this runtime --
    BAD_MESSAGE = 20          # malformed, truncated or inconsistent message
    UNKNOWN_OP = 21           # op code this end does not serve
    ARG_TOO_LONG = 22         # path/argv/env over the limit
    BAD_CAP = 23              # the cap's nonce does not match: forged or stale
    SPAWND_DIED = 24          # the worker of that core died with the request
    REPLY_OUT_OF_ORDER = 25   # a spawnd reply's sequence number did not match
    EXEC_FAILED = 26          # the program could not be started; status = errno
    KILL_FAILED = 27          # the worker could not end the domain; status = errno
    CLIENT_GONE = 28          # the requesting client disconnected
    BUSY = 29                 # too many requests in flight for this client
    NOT_FOUND = 30            # spawnd: no dispatcher of that domain on this core
    SHUTTING_DOWN = 31        # the manager is stopping
    INTERNAL = 32             # a bug in the manager; the manager carries on
    OPEN_FAILED = 33          # a file the domain was to get (stdout=, caps) would not open
    DOMAIN_FORGOTTEN = 34     # the domain ended long enough ago to be out of the history


_MESSAGES = {
    Err.OK: "success",
    Err.INVALID_SPAWND: "no spawnd worker serves that core",
    Err.CREATE_DOMAIN_CAP: "cannot create a domain: the domain table is full",
    Err.DOMAIN_CAP_HASH: "cannot identify the domain cap",
    Err.DOMAIN_TABLE_FIND: "no such domain",
    Err.DOMAIN_NOT_RUNNING: "the domain is not running",
    Err.ALREADY_SPANNED: "the domain already runs on that core",
    Err.SPAWND_EXISTS: "that core already has a spawnd worker",
    Err.NOT_MONITOR: "only the monitor binding may add spawnd workers",
    Err.CLIENTS_TABLE_FIND: "a spawnd reply matched no pending client",
    Err.BAD_MESSAGE: "malformed message",
    Err.UNKNOWN_OP: "unknown operation",
    Err.ARG_TOO_LONG: "argument too long",
    Err.BAD_CAP: "invalid domain cap (forged or stale)",
    Err.SPAWND_DIED: "the spawnd worker of that core died",
    Err.REPLY_OUT_OF_ORDER: "spawnd reply out of order (protocol error)",
    Err.EXEC_FAILED: "the program could not be started",
    Err.KILL_FAILED: "the domain could not be killed",
    Err.CLIENT_GONE: "the client disconnected",
    Err.BUSY: "too many requests in flight",
    Err.NOT_FOUND: "no dispatcher of that domain on this core",
    Err.SHUTTING_DOWN: "the process manager is shutting down",
    Err.INTERNAL: "internal error in the process manager (please report it)",
    Err.OPEN_FAILED: "a file for the program's descriptors could not be opened",
    Err.DOMAIN_FORGOTTEN: "the domain ended long ago and is forgotten (out of the "
                          "runtime's history of ended domains)",
}


def describe(code: int, status: int = 0, detail: str = "") -> str:
    """One readable line for an error code, with the errno where it carries one."""
    try:
        err = Err(code)
        text = f"{err.name}: {_MESSAGES[err]}"
    except ValueError:
        text = f"error {code}: unknown error code"
    if code in (Err.EXEC_FAILED, Err.KILL_FAILED, Err.OPEN_FAILED) and status > 0:
        name = _errno.errorcode.get(status, str(status))
        text += f" ({name}: {os.strerror(status)})"
    if detail:
        text += f": {detail}"
    return text


class ProcMgmtError(Exception):
    """An operation failed; ``code`` is an Err, ``detail`` says on what."""

    def __init__(self, code: int, detail: str = "", status: int = 0):
        self.code = Err(code) if code in Err._value2member_map_ else code
        self.status = status
        self.detail = detail
        super().__init__(describe(code, status, detail))


class RuntimeRefused(ConnectionRefusedError):
    """The runtime is running but would not take this client; the message
    says why (too many clients, the manager out of file descriptors)."""


class RuntimeDirUnsafe(PermissionError):
    """The directory holding the runtimes' sockets is not one only we can
    use; the message names it, what is wrong and the fix."""


class TimeoutExpired(subprocess.TimeoutExpired, TimeoutError):
    """``run`` timed out: the domain was killed. Carries what it had printed
    (``stdout``/``output``, ``stderr``) and the ``domain``. Both a
    ``subprocess.TimeoutExpired`` and a ``TimeoutError``, so either
    ``except`` a user's hands know catches it."""

    def __init__(self, cmd, timeout: float, output=None, stderr=None, domain=None):
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)
        self.domain = domain


class CalledProcessError(subprocess.CalledProcessError):
    """``run(check=True)`` of a program that ended with a non-zero status
    (negative: killed by that signal). A ``subprocess.CalledProcessError``
    with the ``domain`` besides."""

    def __init__(self, returncode: int, cmd, output=None, stderr=None, domain=None):
        super().__init__(returncode, cmd, output, stderr)
        self.domain = domain
