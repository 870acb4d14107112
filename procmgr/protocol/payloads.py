"""Payloads of the messages that carry one: a spawn's program, argv, env,
caps and working directory (SpawnArgs), a status answer (StatusInfo), a domain list (ids),
the events (EventRecord, decode_events)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from procmgr.protocol import _wire
from procmgr.protocol.messages import ProtocolError
from procmgr.protocol.numbers import (
    ARG_LIMIT, EVENT_FIXED, EVENT_HEAD, EVENT_USAGE, LONG_ARG_LIMIT, USAGE_BYTES, Err,
)

# The two layouts of the lengths (spawn_payload.h): narrow, and wide for an
# argv or env past the original's limit -- its mark, a pad, four u32.
_SPAWN_LENS = struct.Struct("<HHHH")
_SPAWN_WIDE_LENS = struct.Struct("<HHIIII")
_WIDE_MARK = 0xFFFF
_LIMITS = {"path": ARG_LIMIT, "argv": LONG_ARG_LIMIT, "env": LONG_ARG_LIMIT,
           "caps": ARG_LIMIT, "cwd and caps": ARG_LIMIT}
# The modes a cap may have (the reader's list, spawn_payload.h):
# "r", "w", "a", "rw": a file opened so.
# "n": /dev/null, for reading at 0 and writing elsewhere; its text is "". Short
# on purpose: a spawn of /bin/true with both streams to /dev/null fits one slot.
# "log": the runtime captures what the domain writes there (a log file the
# worker's rotator bounds); its text is "" (the runtime's bounds) or
# "MAX_BYTES:BACKUPS".
# "dup": a copy of another of the domain's descriptors; its text is that
# descriptor's number (stderr=STDOUT is (2, "dup", "1")).
# "inherit": a copy of another process's descriptor, "PID:FD" (the spawning
# client's own stdout is (1, "inherit", "PID:1")).
_CAP_MODES = _wire.CAP_MODES


@dataclass(slots=True)
class SpawnArgs:
    """What a spawn carries: the program, its argv and env, and its caps.

    Caps (spawn_with_caps) say what the domain's descriptors are:
    ``(fd, mode, text)``. With mode r, w, a or rw, text is a file the
    domain gets open at ``fd``; with "log", ``fd`` is captured into the
    domain's log; with "dup", ``fd`` is a copy of descriptor ``int(text)``;
    with "inherit", of descriptor FD of process PID (text "PID:FD").
    The worker makes them itself (posix_spawn file actions), so nothing of
    the client's or the runtime's own descriptors leaks into the domain.
    A spawn without a cap for 0 gets /dev/null there, and without one for 1
    or 2 has them captured ("log").
    """

    path: str
    argv: list[str]
    env: dict[str, str] | None = None
    caps: list[tuple[int, str, str]] = field(default_factory=list)
    cwd: str | None = None          # None: the worker's working directory
    env_adds: bool = False          # env is added to the worker's, not the whole
    stop: tuple[int, int] | None = None  # a kill's signal and grace in ms (None: the runtime's)
    # What the program's process is made before its exec: NAME -> text,
    # NAME one of SETTINGS (the client's spawn says what each takes).
    settings: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        # argv == [path], the usual case, travels as nothing (and a bit): a
        # spawn of /bin/true with its streams named still fits one slot.
        argv_is_path = self.argv == [self.path]
        if self.env_adds and self.env is None:
            raise ValueError("env_adds without an env to add")
        if self.cwd is not None and not self.cwd:
            raise ValueError("the working directory is empty")
        caps = [_setting_text(k, v) for k, v in self.settings.items()] + \
            [_cap_text(c) for c in self.caps]
        if self.stop is not None:       # after the cwd, before the settings and caps
            caps.insert(0, f"{int(self.stop[0])}:{int(self.stop[1])}")
        parts = [
            _field("path", self.path.encode("utf-8", "surrogateescape")),
            _field("argv", b"" if argv_is_path else _join("argv", self.argv)),
            _field("env", b"" if self.env is None else _join(
                "env", [_env_text(k, v) for k, v in self.env.items()])),
            # A working directory travels first in the caps field.
            _field("caps" if self.cwd is None else "cwd and caps",
                   _join("caps", caps if self.cwd is None else [self.cwd] + caps)),
        ]
        # env None ("inherit the worker's environment") and {} (empty) differ:
        # the high bit of the env length says "given", the next "added to
        # the worker's"; the high bit of the caps length, "a cwd first".
        lens = [len(p) for p in parts]
        wide = lens[1] > ARG_LIMIT or lens[2] > ARG_LIMIT
        flag = 1 << (31 if wide else 15)
        adds = flag >> 1
        if argv_is_path:
            lens[1] |= flag
        if self.env is not None:
            lens[2] |= flag | (adds if self.env_adds else 0)
        if self.cwd is not None:
            lens[3] |= flag
        if self.stop is not None:
            lens[3] |= adds
        head = (_SPAWN_WIDE_LENS.pack(_WIDE_MARK, 0, *lens) if wide
                else _SPAWN_LENS.pack(*lens))
        return head + b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes) -> SpawnArgs:
        """The spawn a payload carries, checked. The reader is C
        (spawn_payload.h), the one the manager's core and the worker use
        too; a payload that breaks a rule raises ProtocolError (ArgTooLong
        for a field over the limit) saying which."""
        got = _wire.decode_spawn(payload)
        if len(got) == 2:
            code, detail = got
            raise (ArgTooLong.worded(detail) if code == Err.ARG_TOO_LONG
                   else ProtocolError(detail))
        return cls(*got)


class ArgTooLong(ProtocolError):
    def __init__(self, name: str, n: int):
        self._set(f"{name} is {n} bytes, over the {_LIMITS[name]}-byte limit")

    def _set(self, detail: str) -> None:
        ProtocolError.__init__(self, detail)
        self.code = Err.ARG_TOO_LONG

    @classmethod
    def worded(cls, detail: str) -> ArgTooLong:
        """One whose text was written elsewhere (the C reader)."""
        err = cls.__new__(cls)
        err._set(detail)
        return err


def _field(name: str, data: bytes) -> bytes:
    if len(data) > _LIMITS[name]:
        raise ArgTooLong(name, len(data))
    return data


def _join(name: str, items: list[str]) -> bytes:
    """Items each ended by a NUL, so [] and [""] stay different."""
    out = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} entry {item!r} is not a string")
        if "\0" in item:
            raise ValueError(f"{name} entry {item!r} contains a NUL byte")
        out.append(item.encode("utf-8", "surrogateescape") + b"\0")
    return b"".join(out)


def _split(blob: bytes) -> list[str]:
    if blob and not blob.endswith(b"\0"):
        raise ProtocolError("a list field does not end with its NUL terminator")
    return blob.decode("utf-8", "surrogateescape").split("\0")[:-1] if blob else []


def _env_text(key: str, value: str) -> str:
    if not isinstance(key, str) or not key or "=" in key:
        raise ValueError(f"env key {key!r} must be non-empty text without '='")
    return f"{key}={value}"


# The settings a spawn may carry (spawn_payload.h's list, in the same order).
SETTINGS = ("limit.as", "limit.cpu", "limit.nofile", "limit.nproc", "limit.core",
            "limit.fsize", "limit.memory_max", "limit.cpu_max", "limit.pids_max",
            "user", "group", "umask")


def _setting_text(name: str, value: str) -> str:
    """A setting as the caps field carries it, NAME=VALUE: told from a cap
    by its first character, a letter where a cap's is a digit."""
    if name not in SETTINGS:
        raise ValueError(f"{name!r} is not a spawn setting ({', '.join(SETTINGS)})")
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"setting {name} has no value, or a NUL in it: {value!r}")
    return f"{name}={value}"


def _cap_text(cap: tuple[int, str, str]) -> str:
    fd, mode, path = cap
    if type(fd) is not int or not 0 <= fd < 1024:
        raise ValueError(f"cap descriptor {fd!r} is not a number in 0..1023")
    if mode not in _CAP_MODES:
        raise ValueError(f"cap mode {mode!r} is not one of {', '.join(_CAP_MODES)}")
    problem = _wire.cap_problem(fd, mode, path)
    if problem:
        raise ValueError(problem)
    return f"{fd}:{mode}:{path}"


def _packed(fmt: str, values) -> bytes:
    """Little-endian ``values``, each of struct format ``fmt``."""
    values = list(values)
    return struct.pack(f"<{len(values)}{fmt}", *values)


def _unpacked(fmt: str, data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data))


def encode_ids(ids) -> bytes:
    """A domain list payload: little-endian u32 ids."""
    return _packed("I", ids)


def decode_ids(payload: bytes) -> list[int]:
    if len(payload) % 4:
        raise ProtocolError(f"domain list of {len(payload)} bytes is not whole u32 ids")
    return _unpacked("I", payload)


_STATUS_HEAD = struct.Struct("<BBiH")
_TIMES = struct.Struct("<dd")           # started, ended (0: not yet), wall clock
# What a dispatcher used, carried by its end (protocol.h, USAGE_BYTES).
_USAGE = struct.Struct("<QQI")
assert _USAGE.size == USAGE_BYTES


@dataclass(slots=True)
class StatusInfo:
    """get_status answer: state, exit status, where it runs, what it runs."""

    state: int
    exit_status: int | None
    signaled: bool
    cores: list[int]
    pids: list[int]
    argv: list[str]
    killed: bool = False        # stopped by a kill (exit_status is then 9)
    started: float = 0.0        # wall clock, s
    ended: float | None = None  # wall clock, s; None while it runs
    # (user CPU us, system CPU us, peak RSS KiB) of its ended dispatchers
    usage: tuple[int, int, int] | None = None

    def encode(self) -> bytes:
        if len(self.pids) != len(self.cores):
            raise ValueError("status: one pid per core")
        flags = (1 if self.exit_status is not None else 0) | (2 if self.signaled else 0) | \
            (4 if self.killed else 0) | (8 if self.usage is not None else 0)
        head = _STATUS_HEAD.pack(self.state, flags, self.exit_status or 0, len(self.cores))
        # An argv over the limit is shown cut at a whole item.
        argv, size = [], 0
        for item in self.argv:
            size += len(item.encode("utf-8", "surrogateescape")) + 1
            if size > ARG_LIMIT:
                break
            argv.append(item)
        argv = _join("argv", argv)
        return head + _packed("H", self.cores) + _packed("i", self.pids) + \
            _TIMES.pack(self.started, self.ended or 0.0) + _USAGE.pack(*(self.usage or (0, 0, 0))) \
            + argv

    @classmethod
    def decode(cls, payload: bytes) -> StatusInfo:
        n0 = _STATUS_HEAD.size
        if len(payload) < n0:
            raise ProtocolError("status payload shorter than its header")
        state, flags, status, ncores = _STATUS_HEAD.unpack_from(payload)
        end_cores = n0 + 2 * ncores
        end_pids = end_cores + 4 * ncores
        end_times = end_pids + _TIMES.size
        end_usage = end_times + _USAGE.size
        if len(payload) < end_usage:
            raise ProtocolError(f"status payload too short for {ncores} cores")
        started, ended = _TIMES.unpack_from(payload, end_pids)
        usage = _USAGE.unpack_from(payload, end_times) if flags & 8 else None
        # A peer's words: a time that is no time (NaN, infinite, negative) is none.
        started = started if math.isfinite(started) and started > 0 else 0.0
        ended = ended if math.isfinite(ended) and ended > 0 else 0.0
        try:
            argv = _split(payload[end_usage:])
        except UnicodeDecodeError as e:
            raise ProtocolError(f"status argv is not valid UTF-8: {e}") from None
        return cls(state, status if flags & 1 else None, bool(flags & 2),
                   _unpacked("H", payload[n0:end_cores]),
                   _unpacked("i", payload[end_cores:end_pids]), argv, bool(flags & 4),
                   started, ended or None, usage)




# EVENTS' answer (protocol.h, "Events"): its first event's seq and the
# events lost before it, then each event's fixed part and a program's name.
_EVENTS_HEAD = struct.Struct("<QQ")
_EVENT = struct.Struct("<dIiiHHBBHQQI")
assert (_EVENTS_HEAD.size, _EVENT.size) == (EVENT_HEAD, EVENT_FIXED)


@dataclass(slots=True)
class EventRecord:
    """One event as the wire carries it (the client's Event words it)."""

    seq: int
    time: float
    dom: int
    pid: int
    status: int
    core: int
    err: int
    kind: int
    flags: int
    # (user CPU us, system CPU us, peak RSS KiB): an end's, if flags say so
    usage: tuple[int, int, int] | None
    name: str


def decode_events(payload: bytes) -> tuple[int, int, list[EventRecord]]:
    """EVENTS' answer: (seq of its first event, events lost before it, the
    events in order). A payload that does not add up is a ProtocolError."""
    if len(payload) < _EVENTS_HEAD.size:
        raise ProtocolError(f"events answer of {len(payload)} bytes is shorter than its head")
    first, lost = _EVENTS_HEAD.unpack_from(payload)
    records, at, seq = [], _EVENTS_HEAD.size, first
    while at < len(payload):
        if at + _EVENT.size > len(payload):
            raise ProtocolError(f"events answer cut inside event {seq}")
        *fields, nlen, user, system, rss = _EVENT.unpack_from(payload, at)
        at += _EVENT.size
        if at + nlen > len(payload):
            raise ProtocolError(f"events answer cut inside event {seq}'s name")
        name = payload[at:at + nlen].decode("utf-8", "replace")
        at += nlen
        usage = (user, system, rss) if fields[-1] & EVENT_USAGE else None
        records.append(EventRecord(seq, *fields, usage, name))
        seq += 1
    return first, lost, records
