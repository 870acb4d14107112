"""The checks every decoder fuzz input goes through, shared by the
hypothesis tests (test_fuzz_decoder.py) and the atheris target
(fuzz_decoder_target.py): whatever bytes arrive, the decoders answer a
message or a ProtocolError -- never another exception -- and what they
accept survives a re-encode unchanged."""

from __future__ import annotations

import os

from procmgr.errors import Err
from procmgr.protocol import (
    ARG_LIMIT, MAX_PAYLOAD, Decoder, Msg, Op, ProtocolError, SpawnArgs, StatusInfo,
    decode_ids, encode, encode_ids,
)


def check_slots(slots) -> list[Msg]:
    """Feed ``slots`` (any sizes) through one Decoder; the messages it gave."""
    dec, out = Decoder(), []
    for slot in slots:
        item = dec.feed(slot)
        assert (item is None) == dec.partial, "None means exactly: continuation still to come"
        if isinstance(item, ProtocolError):
            assert item.code == Err.BAD_MESSAGE and str(item)
        elif item is not None:
            assert isinstance(item, Msg) and item.op in Op._value2member_map_
            assert len(item.payload) <= MAX_PAYLOAD
            data, again = encode(item), Decoder()
            assert [again.feed(data[i:i + 64]) for i in range(0, len(data), 64)][-1] == item
            check_payload(item.payload)
            out.append(item)
    return out


def check_payload(payload: bytes) -> None:
    """Every payload decoder on ``payload``: a value or a ProtocolError."""
    try:
        args = SpawnArgs.decode(payload)
    except ProtocolError as e:
        assert e.code in (Err.BAD_MESSAGE, Err.ARG_TOO_LONG) and str(e)
    else:
        assert SpawnArgs.decode(args.encode()) == args
    try:
        info = StatusInfo.decode(payload)
    except ProtocolError as e:
        assert e.code == Err.BAD_MESSAGE and str(e)
    else:
        if sum(len(os.fsencode(a)) + 1 for a in info.argv) <= ARG_LIMIT:   # else shown cut
            assert StatusInfo.decode(info.encode()) == info
    try:
        ids = decode_ids(payload)
    except ProtocolError as e:
        assert e.code == Err.BAD_MESSAGE
    else:
        assert encode_ids(ids) == payload
