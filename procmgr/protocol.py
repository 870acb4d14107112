"""Wire protocol: fixed 64-byte messages, one ring slot each.

Every message starts with one header slot. A payload longer than the 32
bytes that fit inline continues in ``nfrag`` raw slots that follow the
header; the sender pushes header and continuation slots in one all-or-nothing
batch, so a consumer never sees fragments of two messages interleaved.

Header slot (little-endian), defined once in ``HEADER_FIELDS``; the struct
format and the numpy dtype are both derived from it:

    offset  field   type  meaning
         0  op      u8    operation (Op)
         1  flags   u8    Flag bits
         2  core    u16   target core (requests) / reporting core (spawnd)
         4  seq     u32   request sequence number, echoed by the reply
         8  dom     u32   domain id
        12  err     u16   error code (errors.Err), 0 in requests
        14  nfrag   u16   continuation slots after this one
        16  nonce   u64   domain cap nonce
        24  status  i32   exit status / state / errno, by op
        28  plen    u32   payload length in bytes (inline + continuation)
        32  inline  32B   first 32 bytes of the payload
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from procmgr import _wire
from procmgr.errors import Err
from ringbuf import Closed
from ringbuf._cffi_ring import lib as _ring_codes

SLOT = 64
INLINE = 32

HEADER_FIELDS = (
    ("op", "B", "u1"),
    ("flags", "B", "u1"),
    ("core", "H", "<u2"),
    ("seq", "I", "<u4"),
    ("dom", "I", "<u4"),
    ("err", "H", "<u2"),
    ("nfrag", "H", "<u2"),
    ("nonce", "Q", "<u8"),
    ("status", "i", "<i4"),
    ("plen", "I", "<u4"),
    ("inline", f"{INLINE}s", f"V{INLINE}"),
)
HEADER = struct.Struct("<" + "".join(f for _, f, _ in HEADER_FIELDS))
assert HEADER.size == SLOT, "a header is exactly one slot"


@functools.cache
def _msg_dtype():
    import numpy as np
    return np.dtype([(n, dt) for n, _, dt in HEADER_FIELDS])


def __getattr__(name: str):
    # MSG_DTYPE, the header as a numpy record, is made when asked for:
    # numpy is not imported by what a worker or the manager needs (it
    # took ~14 MB of a worker's ~18 MB of its own memory).
    if name == "MSG_DTYPE":
        return _msg_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# The original interface limits each of path, argv and env to 2048 bytes.
ARG_LIMIT = 2048
# Largest payload: a spawn with every field at its limit plus framing.
MAX_PAYLOAD = 4 * ARG_LIMIT + 16
MAX_FRAGS = -(-(MAX_PAYLOAD - INLINE) // SLOT)


class Op(IntEnum):
    # client -> manager (answered with the same op)
    SPAWN = 1
    SPAWN_WITH_CAPS = 2
    SPAN = 3
    KILL = 4
    EXIT = 5
    WAIT = 6
    GET_STATUS = 7
    GET_DOMAINLIST = 8
    ADD_SPAWND = 9
    GET_STATS = 10      # the manager's own figures (JSON payload), for `procmgr top`
    # manager -> client only: the answer to a request whose op it could not
    # read (an unknown op byte), so the client can still decode it and match
    # it by seq; err says why
    UNREADABLE = 11
    # manager -> spawnd (each answered by one SD_REPLY, in order)
    SD_SPAWN = 16
    SD_SPAN = 17
    SD_KILL = 18
    SD_CLEANUP = 19
    # spawnd -> manager
    SD_REPLY = 24
    SD_EXIT = 25      # a dispatcher ended by itself; status = wait status


CLIENT_OPS = frozenset(range(Op.SPAWN, Op.GET_STATS + 1))
SPAWND_REQUESTS = frozenset((Op.SD_SPAWN, Op.SD_SPAN, Op.SD_KILL, Op.SD_CLEANUP))


class Flag:
    """Bits of the flags byte. Plain ints, not an IntFlag: every message
    touches them, and IntFlag arithmetic builds a new enum object each time."""

    NONE = 0
    NOHANG = 1          # wait: answer at once if the domain has not stopped
    SIGNALED = 2        # SD_EXIT / wait: status is the number of a killing signal
    STILL_RUNNING = 4   # wait with NOHANG: the domain has not stopped yet
    # SD_EXIT, and the reply to SD_KILL: the worker has reaped the dispatcher
    # and holds nothing of the domain any more, so this core needs no
    # SD_CLEANUP (our worker always releases at once; a spawnd that keeps a
    # domain's resources until told -- Barrelfish's -- leaves it clear).
    RELEASED = 8
    REPLY = 0x80        # every reply carries its request's op with this bit


class ProtocolError(Exception):
    """A message that cannot be decoded; ``seq``/``op`` say whom to answer."""

    def __init__(self, detail: str, op: int = 0, seq: int = 0):
        super().__init__(detail)
        self.detail = detail
        self.op = op
        self.seq = seq
        self.code = Err.BAD_MESSAGE


# The message object is C (procmgr/_wire.c), so that the codec's hot path
# never builds one field by field in Python:
#   Msg(op, seq=0, core=0, dom=0, nonce=0, err=0, status=0, flags=0, payload=b"")
# with those nine attributes (writable), ``==`` over all of them, ``is_reply``,
# and ``reply(err=0, status=0, flags=0, **fields)``: the answer to a request,
# same op, seq, core, domain and nonce unless given, REPLY set.
Msg = _wire.Msg
_wire.set_valid_ops(bytes(op in Op._value2member_map_ for op in range(256)))
_wire_send, _wire_take = _wire.send, _wire.take
_TAKE_DONE = (_wire.TAKE_EMPTY, _wire.TAKE_LIMIT)
_EFULL = _ring_codes.RB_EFULL


def frags_for(plen: int) -> int:
    return 0 if plen <= INLINE else -(-(plen - INLINE) // SLOT)


def encode(msg: Msg) -> bytes:
    """The message as 64 * (1 + nfrag) bytes, ready for one batch push."""
    plen = len(msg.payload)
    if plen > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {plen} bytes is over the {MAX_PAYLOAD}-byte limit",
                            msg.op, msg.seq)
    nfrag = frags_for(plen)
    head = HEADER.pack(msg.op, msg.flags, msg.core, msg.seq, msg.dom, msg.err, nfrag,
                       msg.nonce, msg.status, plen, msg.payload[:INLINE])
    if not nfrag:
        return head
    rest = msg.payload[INLINE:]
    return head + rest + b"\0" * (nfrag * SLOT - len(rest))


def encode_rows(msg: Msg):
    """``encode`` as an array of MSG_DTYPE rows (for Ring.push_many)."""
    import numpy as np
    return np.frombuffer(encode(msg), dtype=_msg_dtype())


class Decoder:
    """Turns a stream of slots from one ring back into messages.

    Feed it slots in arrival order (``feed``); it returns a Msg per complete
    message, a ProtocolError per bad one, or None while continuation slots
    are still to come (they may arrive in a later batch). A bad header is
    answered with an error and only that slot is dropped: the next slot is
    read as a header again.
    """

    __slots__ = ("_pending", "_plen", "_need", "_parts", "partial")

    def __init__(self):
        # True while a message's continuation slots are still missing (a
        # plain attribute: take() reads it once per batch).
        self.partial = False
        self._pending: Msg | None = None
        self._plen = 0
        self._need = 0
        self._parts: list[bytes] = []

    def feed(self, slot: bytes) -> Msg | ProtocolError | None:
        if self._pending is not None:
            return self._continue(slot)
        if len(slot) != SLOT:
            return ProtocolError(f"truncated message: {len(slot)} of {SLOT} header bytes")
        (op, flags, core, seq, dom, err, nfrag, nonce, status, plen,
         inline) = HEADER.unpack(slot)
        if op not in Op._value2member_map_:
            return ProtocolError(f"unknown op {op}", op, seq)
        if plen > MAX_PAYLOAD:
            return ProtocolError(
                f"payload length {plen} is over the {MAX_PAYLOAD}-byte limit", op, seq)
        if nfrag != frags_for(plen):
            return ProtocolError(
                f"payload length {plen} needs {frags_for(plen)} continuation slots, "
                f"header says {nfrag}", op, seq)
        msg = Msg(op, seq, core, dom, nonce, err, status, flags, inline[:plen])
        if not nfrag:
            return msg
        self._pending, self._plen, self._need, self._parts = msg, plen, nfrag, [inline]
        self.partial = True
        return None

    def _continue(self, slot: bytes) -> Msg | ProtocolError | None:
        msg = self._pending
        if len(slot) != SLOT:
            self._pending, self._parts, self.partial = None, [], False
            return ProtocolError(
                f"truncated continuation slot: {len(slot)} of {SLOT} bytes", msg.op, msg.seq)
        self._parts.append(slot)
        self._need -= 1
        if self._need:
            return None
        msg.payload = b"".join(self._parts)[: self._plen]
        self._pending, self._parts, self.partial = None, [], False
        return msg


def send(ring, msg: Msg) -> bool:
    """Put ``msg`` in ``ring`` now, all its slots or none; False if it does
    not fit. Never waits. A one-slot message goes straight from the object
    into the slot (_wire); a longer one is encoded here and pushed whole."""
    rc = _wire_send(ring.handle_addr, msg)
    if rc == 0:
        return True
    if rc == _EFULL:
        return False
    if rc == _wire.SEND_NOT_INLINE:
        return ring.try_push_all(encode(msg))
    ring.raise_code(rc, "send")


def take(ring, decoder: Decoder, limit: int = 1 << 30) -> list[Msg | ProtocolError]:
    """Up to ``limit`` decoded messages (or decode errors) now in ``ring``;
    never waits. A message whose fragments are not all in yet stays in
    ``decoder`` for the next call. A closed or dead peer raises ringbuf's
    Closed -- but only once what it sent before has been returned.

    One-slot messages are read in C (_wire.take), which stops in front of
    anything else: a message with continuation slots, or a slot that is not
    a valid header, is fed to ``decoder`` here, one slot at a time."""
    out = []
    addr = ring.handle_addr
    while len(out) < limit:
        if not decoder.partial and _wire_take(addr, limit - len(out), out) in _TAKE_DONE:
            break
        # Declined by _wire (or the ring reported an error): the Python way.
        try:
            slot = ring.try_pop()
        except Closed:
            if out:
                return out      # the next call raises again: Closed is sticky
            raise
        if slot is None:
            break
        item = decoder.feed(slot)
        if item is not None:
            out.append(item)
    return out


# ---- payloads ---------------------------------------------------------------

_SPAWN_LENS = struct.Struct("<HHHH")
_FILE_MODES = ("r", "w", "a", "rw")
# "n": /dev/null, for reading at 0 and writing elsewhere; its text is "". Short
# on purpose: a spawn of /bin/true with both streams to /dev/null fits one slot.
# "log": the runtime captures what the domain writes there (a log file the
# worker's rotator bounds); its text is "" (the runtime's bounds) or
# "MAX_BYTES:BACKUPS".
# "dup": a copy of another of the domain's descriptors; its text is that
# descriptor's number (stderr=STDOUT is (2, "dup", "1")).
# "inherit": a copy of another process's descriptor, "PID:FD" (the spawning
# client's own stdout is (1, "inherit", "PID:1")).
_CAP_MODES = _FILE_MODES + ("n", "log", "dup", "inherit")


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

    def encode(self) -> bytes:
        # argv == [path], the usual case, travels as nothing (and a bit): a
        # spawn of /bin/true with its streams named still fits one slot.
        argv_is_path = self.argv == [self.path]
        parts = [
            _field("path", self.path.encode()),
            _field("argv", b"" if argv_is_path else _join("argv", self.argv)),
            _field("env", b"" if self.env is None else _join(
                "env", [_env_text(k, v) for k, v in self.env.items()])),
            _field("caps", _join("caps", [_cap_text(c) for c in self.caps])),
        ]
        # env None ("inherit the worker's environment") and {} (empty) differ:
        # the high bit of the env length says "given".
        lens = [len(p) for p in parts]
        if argv_is_path:
            lens[1] |= 0x8000
        if self.env is not None:
            lens[2] |= 0x8000
        return _SPAWN_LENS.pack(*lens) + b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes) -> SpawnArgs:
        if len(payload) < _SPAWN_LENS.size:
            raise ProtocolError("spawn payload shorter than its length fields")
        lp, la_raw, le_raw, lc = _SPAWN_LENS.unpack_from(payload)
        env_given, le = bool(le_raw & 0x8000), le_raw & 0x7FFF
        argv_is_path, la = bool(la_raw & 0x8000), la_raw & 0x7FFF
        if _SPAWN_LENS.size + lp + la + le + lc != len(payload):
            raise ProtocolError(
                f"spawn payload is {len(payload)} bytes but its fields add up to "
                f"{_SPAWN_LENS.size + lp + la + le + lc}")
        if max(lp, la, le, lc) > ARG_LIMIT:
            for name, n in (("path", lp), ("argv", la), ("env", le), ("caps", lc)):
                if n > ARG_LIMIT:
                    raise ArgTooLong(name, n)
        # Every spawn passes through here in the manager: slice once, and
        # skip the fields a plain spawn leaves empty.
        a = _SPAWN_LENS.size + lp
        b = a + la
        c = b + le
        try:
            path = payload[_SPAWN_LENS.size:a].decode()
            argv = _split(payload[a:b])
            env_items = _split(payload[b:c]) if le else []
            caps = [_parse_cap(t) for t in _split(payload[c:])] if lc else []
        except UnicodeDecodeError as e:
            raise ProtocolError(f"spawn payload is not valid UTF-8: {e}") from None
        if not path:
            raise ProtocolError("spawn without a program path")
        if "\0" in path:
            raise ProtocolError("the program path contains a NUL byte")
        if env_items and not env_given:
            raise ProtocolError("spawn payload has env entries but says env is not given")
        if argv_is_path:
            if argv:
                raise ProtocolError("spawn payload has argv entries but says argv is [path]")
            argv = [path]
        env = None
        if env_given:
            env = {}
            for item in env_items:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise ProtocolError(f"env entry {item!r} is not KEY=VALUE")
                env[key] = value
        return cls(path, argv, env, caps)


class ArgTooLong(ProtocolError):
    def __init__(self, name: str, n: int):
        super().__init__(f"{name} is {n} bytes, over the {ARG_LIMIT}-byte limit")
        self.code = Err.ARG_TOO_LONG


def _field(name: str, data: bytes) -> bytes:
    if len(data) > ARG_LIMIT:
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
        out.append(item.encode() + b"\0")
    return b"".join(out)


def _split(blob: bytes) -> list[str]:
    if blob and not blob.endswith(b"\0"):
        raise ProtocolError("a list field does not end with its NUL terminator")
    return blob.decode().split("\0")[:-1] if blob else []


def _env_text(key: str, value: str) -> str:
    if not isinstance(key, str) or not key or "=" in key:
        raise ValueError(f"env key {key!r} must be non-empty text without '='")
    return f"{key}={value}"


def _cap_text(cap: tuple[int, str, str]) -> str:
    fd, mode, path = cap
    if type(fd) is not int or not 0 <= fd < 1024:
        raise ValueError(f"cap descriptor {fd!r} is not a number in 0..1023")
    if mode not in _CAP_MODES:
        raise ValueError(f"cap mode {mode!r} is not one of {', '.join(_CAP_MODES)}")
    problem = _cap_problem(fd, mode, path)
    if problem:
        raise ValueError(problem)
    return f"{fd}:{mode}:{path}"


def _cap_problem(fd: int, mode: str, text: str) -> str:
    """What is wrong with a cap's text for its mode ("" if nothing)."""
    if mode == "log":
        if fd not in (1, 2):
            return f"only stdout and stderr can be captured, not descriptor {fd}"
        if text:
            limit, sep, backups = text.partition(":")
            if not (sep and limit.isascii() and limit.isdigit() and backups.isascii()
                    and backups.isdigit() and 0 < int(limit) < 1 << 63
                    and int(backups) <= 32):         # logs.LOG_MAX_BACKUPS
                return f"log bounds {text!r} are not MAX_BYTES:BACKUPS (MAX_BYTES > 0)"
        return ""
    if mode == "n":
        return f"cap for descriptor {fd} to /dev/null has text {text!r}" if text else ""
    if mode == "inherit":
        pid, sep, src = text.partition(":")
        if fd not in (1, 2):
            return f"only stdout and stderr can be inherited, not descriptor {fd}"
        if not (sep and pid.isascii() and pid.isdigit() and src.isascii() and src.isdigit()
                and 0 < int(pid) < 1 << 22 and int(src) < 1 << 20):
            return f"inherited descriptor {text!r} is not PID:FD"
        return ""
    if mode == "dup":
        if not (text.isascii() and text.isdigit() and int(text) < 1024 and int(text) != fd):
            return f"cap for descriptor {fd} copies {text!r}, not another descriptor 0..1023"
        return ""
    return "" if text else f"cap for descriptor {fd} has no path"


def _parse_cap(text: str) -> tuple[int, str, str]:
    fd, _, rest = text.partition(":")
    mode, _, path = rest.partition(":")
    if not (fd.isascii() and fd.isdigit()) or int(fd) >= 1024 or mode not in _CAP_MODES:
        raise ProtocolError(f"cap {text!r} is not FD:MODE:PATH")
    problem = _cap_problem(int(fd), mode, path)
    if problem:
        raise ProtocolError(f"cap {text!r} is not FD:MODE:PATH ({problem})")
    return int(fd), mode, path


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


@dataclass(slots=True)
class StatusInfo:
    """get_status answer: state, exit status, where it runs, what it runs."""

    state: int
    exit_status: int | None
    signaled: bool
    cores: list[int]
    pids: list[int]
    argv: list[str]

    def encode(self) -> bytes:
        if len(self.pids) != len(self.cores):
            raise ValueError("status: one pid per core")
        flags = (1 if self.exit_status is not None else 0) | (2 if self.signaled else 0)
        head = _STATUS_HEAD.pack(self.state, flags, self.exit_status or 0, len(self.cores))
        # An argv over the limit is shown cut at a whole item.
        argv, size = [], 0
        for item in self.argv:
            size += len(item.encode()) + 1
            if size > ARG_LIMIT:
                break
            argv.append(item)
        argv = _join("argv", argv)
        return head + _packed("H", self.cores) + _packed("i", self.pids) + argv

    @classmethod
    def decode(cls, payload: bytes) -> StatusInfo:
        n0 = _STATUS_HEAD.size
        if len(payload) < n0:
            raise ProtocolError("status payload shorter than its header")
        state, flags, status, ncores = _STATUS_HEAD.unpack_from(payload)
        end_cores = n0 + 2 * ncores
        end_pids = end_cores + 4 * ncores
        if len(payload) < end_pids:
            raise ProtocolError(f"status payload too short for {ncores} cores")
        try:
            argv = _split(payload[end_pids:])
        except UnicodeDecodeError as e:
            raise ProtocolError(f"status argv is not valid UTF-8: {e}") from None
        return cls(state, status if flags & 1 else None, bool(flags & 2),
                   _unpacked("H", payload[n0:end_cores]),
                   _unpacked("i", payload[end_cores:end_pids]), argv)
