"""The protocol's numbers, as Python enums: made from protocol.h (through
cffi, procmgr/protocol/build.py), the one place they are written.

    Op      every operation (OP_* in the header)
    Flag    bits of the flags byte, plain ints (FLAG_*)
    Err     error codes (E_*); procmgr/errors.py words them
    State   a domain's state (STATE_*)
    EventKind   what an event says happened (EVENT_*)
    HEADER_FIELDS, HEADER   the header slot's fields in order, and its struct
    SLOT, INLINE, ARG_LIMIT, MAX_PAYLOAD, MAX_FRAGS, LONG_ARG_LIMIT, SPAWN_MAX_PAYLOAD,
    PROGRAM_WORDS_MAX,
    LONG_OPS, CLIENT_OPS,
    EXIT_STATUS_KILLED, LOG_MAX_BYTES, LOG_BACKUPS, LOG_MIN_BYTES, LOG_MAX_BACKUPS,
    KILL_MAX_SIGNAL, KILL_GRACE_DEFAULT, USAGE_BYTES,
    EVENTS_FROM_NOW, EVENTS_WAIT_MAX_MS, EVENT_HEAD, EVENT_FIXED, EVENT_USAGE,
    EVENT_NAME_MAX
"""

from __future__ import annotations

import struct
from enum import IntEnum

from procmgr.protocol._defs import ffi, lib


def _members(ctype: str, prefix: str) -> dict[str, int]:
    """An enum of the header as {name without its prefix: value}, by value."""
    items = sorted(ffi.typeof(ctype).relements.items(), key=lambda kv: kv[1])
    return {name.removeprefix(prefix): value for name, value in items}


Op = IntEnum("Op", _members("enum op", "OP_"), module=__name__)
Op.__doc__ = "Every operation of the protocol (protocol.h, enum op)."
Err = IntEnum("Err", _members("enum err", "E_"), module=__name__)
Err.__doc__ = "Error codes of the err field (protocol.h, enum err; errors.py words them)."
State = IntEnum("State", _members("enum state", "STATE_"), module=__name__)
State.__doc__ = "A domain's state (protocol.h, enum state; domain.py draws the machine)."
EventKind = IntEnum("EventKind", _members("enum event_kind", "EVENT_"), module=__name__)
EventKind.__doc__ = "What an event says happened (protocol.h, enum event_kind)."


class Flag:
    """Bits of the flags byte (protocol.h, enum flag, says what each means).
    Plain ints, not an IntFlag: every message touches them, and IntFlag
    arithmetic builds a new enum object each time."""


for _name, _value in _members("enum flag", "FLAG_").items():
    setattr(Flag, _name, _value)

SLOT = lib.SLOT
INLINE = lib.INLINE
ARG_LIMIT = lib.ARG_LIMIT
MAX_PAYLOAD = lib.MAX_PAYLOAD
MAX_FRAGS = lib.MAX_FRAGS
LONG_ARG_LIMIT = lib.LONG_ARG_LIMIT
SPAWN_MAX_PAYLOAD = lib.SPAWN_MAX_PAYLOAD
PROGRAM_WORDS_MAX = lib.PROGRAM_WORDS_MAX
EXIT_STATUS_KILLED = lib.EXIT_STATUS_KILLED
KILL_MAX_SIGNAL = lib.KILL_MAX_SIGNAL
KILL_GRACE_DEFAULT = lib.KILL_GRACE_DEFAULT
USAGE_BYTES = lib.USAGE_BYTES
LOG_MAX_BYTES = lib.LOG_MAX_BYTES
LOG_BACKUPS = lib.LOG_BACKUPS
LOG_MIN_BYTES = lib.LOG_MIN_BYTES
LOG_MAX_BACKUPS = lib.LOG_MAX_BACKUPS
EVENTS_FROM_NOW = lib.EVENTS_FROM_NOW
EVENTS_WAIT_MAX_MS = lib.EVENTS_WAIT_MAX_MS
EVENT_HEAD = lib.EVENT_HEAD
EVENT_FIXED = lib.EVENT_FIXED
EVENT_USAGE = lib.EVENT_USAGE
EVENT_NAME_MAX = lib.EVENT_NAME_MAX
CLIENT_OPS = frozenset(range(lib.FIRST_CLIENT_OP, lib.LAST_CLIENT_OP + 1))
# The ops whose payload may be longer than MAX_PAYLOAD (protocol.h, at
# SPAWN_MAX_PAYLOAD; messages.py's payload_limit says how much).
LONG_OPS = frozenset((Op.SPAWN, Op.SPAWN_WITH_CAPS, Op.SD_SPAWN, Op.SD_SPAN, Op.PROGRAM))
SPAWND_REQUESTS = frozenset((Op.SD_SPAWN, Op.SD_SPAN, Op.SD_KILL, Op.SD_CLEANUP,
                             Op.SD_SIGNAL))

# The header slot's fields in order, as (name, struct format, numpy dtype),
# read off struct wire_header: the struct and numpy forms both derive from it.
_FORMATS = {"uint8_t": ("B", "u1"), "uint16_t": ("H", "<u2"), "uint32_t": ("I", "<u4"),
            "uint64_t": ("Q", "<u8"), "int32_t": ("i", "<i4")}


def _header_fields():
    fields, at = [], 0
    for name, f in ffi.typeof("struct wire_header").fields:
        assert f.offset == at, f"wire_header.{name} is not packed"
        if f.type.kind == "array":
            n = f.type.length
            fields.append((name.rstrip("_"), f"{n}s", f"V{n}"))
        else:
            fields.append((name, *_FORMATS[f.type.cname]))
        at += ffi.sizeof(f.type)
    return tuple(fields)


HEADER_FIELDS = _header_fields()
HEADER = struct.Struct("<" + "".join(f for _, f, _ in HEADER_FIELDS))
assert HEADER.size == SLOT, "a header is exactly one slot"
