"""Error codes of the process manager in words, and the exceptions
clients see.

Codes travel in the 16-bit ``err`` field of every message; they are
defined, with a line each on when they are given, in
procmgr/protocol/protocol.h (enum err), and ``Err`` is that enum.
"""

from __future__ import annotations

import errno as _errno
import os
import subprocess

from procmgr.protocol.numbers import Err


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
    Err.PROGRAM_EXISTS: "a program of that name is supervised already",
    Err.NO_SUCH_PROGRAM: "no supervised program of that name",
    Err.NODE_DIED: "the domain's node died, or its agent ended (and with it the node's "
                   "runtime and its domains)",
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


class RuntimeGone(ConnectionError):
    """The runtime's manager went away (it died, or was stopped) while this
    client was connected: no answer will come to anything asked of it.
    What the lower layer said (ringbuf's PeerDied or Closed) is the
    exception's ``__cause__``."""


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
