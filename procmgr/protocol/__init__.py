"""The wire protocol between clients, the manager and the spawnd workers:
fixed 64-byte messages, one ring slot each (and continuation slots for a
long payload).

    protocol.h    the one definition: ops, flags, errors, states, limits,
                  the header slot's layout (C includes it; Python reads it)
    numbers.py    those numbers as Python enums and constants
    messages.py   the message object (Msg, in C: _wire.c), encode, the
                  Decoder, send and take on a ring
    payloads.py   what spawn, status, domain-list and events messages carry

Everything is re-exported here: ``from procmgr.protocol import Msg, Op``.
"""

from procmgr.protocol.messages import (
    Decoder,
    HeldBytes,
    Msg,
    ProtocolError,
    encode,
    encode_rows,
    frags_for,
    payload_limit,
    send,
    send_long,
    take,
)
from procmgr.protocol.numbers import (
    ARG_LIMIT,
    CLIENT_OPS,
    EVENT_FIXED,
    EVENT_NAME_MAX,
    EVENTS_FROM_NOW,
    EVENTS_WAIT_MAX_MS,
    EXIT_STATUS_KILLED,
    HEADER,
    HEADER_FIELDS,
    INLINE,
    KILL_GRACE_DEFAULT,
    KILL_MAX_SIGNAL,
    LOG_BACKUPS,
    LOG_MAX_BACKUPS,
    LOG_MAX_BYTES,
    LOG_MIN_BYTES,
    LONG_ARG_LIMIT,
    LONG_OPS,
    USAGE_BYTES,
    MAX_FRAGS,
    MAX_PAYLOAD,
    SLOT,
    SPAWN_MAX_PAYLOAD,
    SPAWND_REQUESTS,
    Err,
    EventKind,
    Flag,
    Op,
    State,
)
from procmgr.protocol.payloads import (
    ArgTooLong,
    EventRecord,
    SpawnArgs,
    StatusInfo,
    decode_events,
    decode_ids,
    encode_ids,
)


def __getattr__(name: str):
    # MSG_DTYPE (numpy) is made when first asked for: see messages.py.
    if name == "MSG_DTYPE":
        from procmgr.protocol import messages
        return messages.MSG_DTYPE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
