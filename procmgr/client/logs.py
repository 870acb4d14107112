"""Where a domain's output goes, and reading it back.

A spawn says what each of the domain's standard streams is, in the spirit
of ``subprocess``: ``stdout=`` and ``stderr=`` each one of

- ``LOG`` (the default): captured by the runtime into the domain's log
  files, bounded on disk, readable while it runs and after it ends;
- ``DEVNULL``;
- a path (``str`` or ``os.PathLike``), emptied first, or appended to with
  ``append=True`` (relative to the caller's working directory, not the
  worker's);
- ``INHERIT``: the spawning process's own stdout/stderr. The domain is not
  the caller's child: its worker takes a copy of the caller's descriptor
  (pidfd_getfd, the same open file). Where the system does not allow that
  (Yama's ptrace_scope >= 1 for a non-root user), it opens the same file
  anew through ``/proc/PID/fd/N`` for appending: a terminal or a pipe
  behave the same, a regular file gets an offset of its own, and a socket
  cannot be reopened that way (OPEN_FAILED);
- for stderr, ``STDOUT``: the same as stdout;

and ``stdin=`` ``DEVNULL`` (the default) or a path. These travel as caps
(protocol.SpawnArgs), so ``spawn_with_caps`` can name any other descriptor
beside them.

Captured logs: the program writes ``logs/CORE/DOM.stdout`` and
``DOM.stderr`` in the runtime's directory itself (no pipe: its output costs
what writing a file costs). Its worker's rotator keeps each within
``max_bytes``: the oldest part goes to ``.1`` (``.1`` the newest rotated
file, ``.BACKUPS`` the oldest) and is cut out of the file as a hole, so a
stream takes at most about ``max_bytes * (backups + 1)`` on disk and no
byte is lost on the way (spawnd_workers/_rotator.h). The files are sparse:
read them with ``output``/``follow``/``procmgr logs`` (or from SEEK_DATA),
not ``cat``. A domain's files are kept at least as long as the manager
remembers it (its bounded history of ended domains); later they are reused
for other domains' logs, and all of them go at ``down``.

What a program wrote is in its file when its write returns: once ``wait``
has answered, ``output`` has all of it, and a crash loses nothing the
kernel took.
"""

from __future__ import annotations

import enum
import os
import stat
from typing import Callable, Iterator

# A captured stream's bounds unless the runtime or the spawn says otherwise,
# and their limits, are the protocol's (protocol.h).
from procmgr.protocol import (  # noqa: F401 (re-exported)
    LOG_BACKUPS, LOG_MAX_BACKUPS, LOG_MAX_BYTES, LOG_MIN_BYTES,
)

STREAMS = ("stdout", "stderr")
END_ATTR = "user.procmgr.end"     # on NAME.1 (spawnd_workers/_rotator.c)


class Stream(enum.Enum):
    """Where a standard stream of a domain goes (besides a path)."""

    LOG = "log"
    DEVNULL = "devnull"
    INHERIT = "inherit"
    STDOUT = "stdout"

    def __repr__(self) -> str:
        return f"procmgr.{self.name}"


LOG, DEVNULL, INHERIT, STDOUT = Stream.LOG, Stream.DEVNULL, Stream.INHERIT, Stream.STDOUT


def stream_caps(stdin=None, stdout=None, stderr=None, *, append: bool = False,
                log_max_bytes: int | None = None, log_backups: int | None = None
                ) -> list[tuple[int, str, str]]:
    """The caps that say what the domain's 0, 1 and 2 are. None for a stream
    is its default (stdin DEVNULL, stdout and stderr LOG) and adds no cap
    unless log bounds are given: the common spawn stays a one-slot message."""
    bounds = ""
    if log_max_bytes is not None or log_backups is not None:
        limit = LOG_MAX_BYTES if log_max_bytes is None else log_max_bytes
        backups = LOG_BACKUPS if log_backups is None else log_backups
        if type(limit) is not int or not LOG_MIN_BYTES <= limit < 1 << 62:
            raise ValueError(f"log_max_bytes must be an int >= {LOG_MIN_BYTES} (a rotation "
                             f"cuts whole blocks), not {limit!r}")
        if type(backups) is not int or not 0 <= backups <= LOG_MAX_BACKUPS:
            raise ValueError(f"log_backups must be an int in 0..{LOG_MAX_BACKUPS}, "
                             f"not {backups!r}")
        bounds = f"{limit}:{backups}"
    caps = []
    if stdin is not None and stdin is not DEVNULL:
        caps.append((0, "r", _path("stdin", stdin)))
    for fd, name, where in ((1, "stdout", stdout), (2, "stderr", stderr)):
        if where is None or where is LOG:
            if bounds:
                caps.append((fd, "log", bounds))
        elif where is DEVNULL:
            caps.append((fd, "n", ""))
        elif where is INHERIT:
            caps.append((fd, "inherit", f"{os.getpid()}:{fd}"))
        elif where is STDOUT:
            if fd != 2:
                raise ValueError("STDOUT is for stderr only")
            caps.append((2, "dup", "1"))
        else:
            caps.append((fd, "a" if append else "w", _path(name, where)))
    return caps


def _path(name: str, where) -> str:
    if isinstance(where, Stream):
        raise ValueError(f"{name}={where!r} is not allowed (stdin takes DEVNULL or a path)")
    if not isinstance(where, (str, os.PathLike)):
        raise TypeError(f"{name} must be LOG, DEVNULL, INHERIT, STDOUT or a path, "
                        f"not {where!r}")
    path = os.fsdecode(os.fspath(where))
    if not path:
        raise ValueError(f"{name} path is empty")
    return os.path.abspath(path)       # the worker's working directory is not ours


def check_stream(stream: str) -> str:
    if stream not in STREAMS:
        raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
    return stream


def log_name(dom: int, fd: int) -> str:
    """A captured stream's file in its core's directory (as _rotator.c names it)."""
    return f"{dom}.{STREAMS[fd - 1]}"


def log_path(logs_dir: str, dom: int, core: int, stream: str) -> str:
    """The current file of a captured stream."""
    return os.path.join(logs_dir, str(core), f"{dom}.{check_stream(stream)}")


def _inode(path: str) -> int | None:
    try:
        return os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return None


def _open_log(path: str):
    """A log file open for reading, or None if there is none: a regular
    file only, not through a link, never waiting on a FIFO -- a program can
    put anything at a name in the logs directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _read_from(f, pos: int) -> tuple[bytes, int, int]:
    """What the file holds from ``pos`` on, skipping the hole rotations
    leave at its head: the bytes, where they begin (past ``pos`` if a
    rotation cut there) and where they end."""
    fd = f.fileno()
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:            # ENXIO: no data at or after pos
        return b"", pos, pos
    f.seek(start)
    data = f.read()
    # A rotation may have cut out what was just read (a hole reads as zeros).
    try:
        now = os.lseek(fd, start, os.SEEK_DATA)
    except OSError:
        now = start + len(data)
    if now > start:
        data, start = data[now - start:], now
    return data, start, start + len(data)


def _rotated_end(f) -> int:
    """Where a rotated file's bytes end in the current file (0: unknown, as
    where the file system keeps no user attributes). The rotator writes it
    before it cuts them out of the current file: a reader between the two
    reads them once, and a follower a rotation overtook finds them there."""
    try:
        return int(os.getxattr(f.fileno(), END_ATTR))
    except (OSError, ValueError):
        return 0


def _read_all(base: str) -> tuple[bytes, object, int]:
    """All the stream's files hold, oldest first; its current file left open
    (None if there is none) and where what was read of it ends. Again if a
    rotation came between (NAME.1 is then another file)."""
    for _ in range(10):
        newest = _inode(f"{base}.1")
        rotated = []
        while (f := _open_log(f"{base}.{len(rotated) + 1}")) is not None:
            rotated.append(f)
        current = _open_log(base)
        try:
            data = b"".join(f.read() for f in reversed(rotated))
            start = _rotated_end(rotated[0]) if rotated else 0
            tail, _, pos = _read_from(current, start) if current else (b"", 0, 0)
        finally:
            for f in rotated:
                f.close()
        if _inode(f"{base}.1") == newest:
            return data + tail, current, pos
        if current is not None:
            current.close()
    return data + tail, None, 0


def _check_tail(tail) -> None:
    if tail is not None and (type(tail) is not int or tail < 0):
        raise ValueError(f"tail must be a number of lines >= 0, not {tail!r}")


def read_log(logs_dir: str, dom: int, core: int, stream: str, tail: int | None = None) -> bytes:
    """What the stream's files hold, oldest first; with ``tail``, its last
    ``tail`` lines only."""
    _check_tail(tail)
    data, current, _ = _read_all(log_path(logs_dir, dom, core, stream))
    if current is not None:
        current.close()
    return data if tail is None else last_lines(data, tail)


def last_lines(data: bytes, n: int) -> bytes:
    if n == 0:
        return b""
    cut = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(n):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return data
    return data[cut + 1:]


class LogFollower:
    """A stream's output as it comes, like ``tail -f``: ``take()`` returns
    what was written since the last call (first, what its files held). What
    a rotation cut from under it is read from NAME.1; a follower more than a
    rotation behind the program misses what went between. ``close()`` when
    done."""

    def __init__(self, logs_dir: str, dom: int, core: int, stream: str, tail: int | None = None):
        _check_tail(tail)
        self.base = log_path(logs_dir, dom, core, stream)
        first, self._current, self._pos = _read_all(self.base)
        self._first = first if tail is None else last_lines(first, tail)

    def take(self) -> bytes:
        first, self._first = self._first, b""
        if self._current is None:
            self._current = _open_log(self.base)
            if self._current is None:
                return first
        was = self._pos
        data, start, self._pos = _read_from(self._current, was)
        if start > was:           # a rotation cut what was not read yet
            data = self._rotated_since(was, start) + data
        return first + data

    def _rotated_since(self, pos: int, start: int) -> bytes:
        """What a rotation moved from [pos, start) of the current file into
        NAME.1, if it is all there (it is, unless more than one rotation
        came since the last look)."""
        f = _open_log(self.base + ".1")
        if f is None:
            return b""
        with f:
            end = _rotated_end(f)
            low = end - os.fstat(f.fileno()).st_size
            if end != start or not low <= pos < end:
                return b""
            f.seek(pos - low)
            return f.read(end - pos)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None


def follow_logs(logs_dir: str, dom: int, core: int, streams, ended: Callable[[], bool],
                tail: int | None = None) -> Iterator[tuple[str, bytes] | None]:
    """(stream, piece) for each of ``streams`` as they come, until
    ``ended()`` has said True and everything written before was taken -- a
    dispatcher's output is in its file when its exit is reported. None
    when nothing new was there: the caller waits a little before the next
    look, as it waits (a sync client polling its answers, an async one
    awaiting)."""
    followers = [(stream, LogFollower(logs_dir, dom, core, stream, tail)) for stream in streams]
    try:
        while True:
            done = ended()     # asked first: what it covers is in the files now
            moved = False
            for stream, follower in followers:
                data = follower.take()
                if data:
                    moved = True
                    yield stream, data
            if done:
                return
            if not moved:
                yield None
    finally:
        for _, follower in followers:
            follower.close()
