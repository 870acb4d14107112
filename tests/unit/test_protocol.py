"""Unit tests of procmgr.protocol: the 64-byte wire format and its payloads.

Round trips are property tests (hypothesis); the error paths are spelled out
one by one, because the error a malformed message earns is the contract a
peer (or an attacker) relies on: a ProtocolError saying what is wrong, never
a crash of the decoder.
"""

from __future__ import annotations

import functools
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ringbuf
from procmgr.errors import Err
from procmgr.protocol.payloads import SETTINGS
from procmgr.protocol import (
    ARG_LIMIT,
    HEADER,
    HEADER_FIELDS,
    INLINE,
    MAX_FRAGS,
    MAX_PAYLOAD,
    LONG_ARG_LIMIT,
    SPAWN_MAX_PAYLOAD,
    MSG_DTYPE,
    SLOT,
    ArgTooLong,
    Decoder,
    Flag,
    Msg,
    Op,
    ProtocolError,
    SpawnArgs,
    StatusInfo,
    decode_ids,
    encode,
    encode_ids,
    encode_rows,
    frags_for,
    send,
    take,
)

# No example database: the tests must not write into the working tree.
FAST = settings(max_examples=100, deadline=None, database=None)

U8, U16, U32, U64 = (st.integers(0, 2**n - 1) for n in (8, 16, 32, 64))
I32 = st.integers(-(2**31), 2**31 - 1)
VALID_OPS = sorted(int(op) for op in Op)
UNKNOWN_OPS = [v for v in range(256) if v not in VALID_OPS]

# Payload lengths cluster at the slot boundaries, where off-by-ones live.
_EDGE_LENS = [0, 1, INLINE - 1, INLINE, INLINE + 1, INLINE + SLOT - 1, INLINE + SLOT,
              INLINE + SLOT + 1, MAX_PAYLOAD - 1, MAX_PAYLOAD]
_PATTERN = bytes(range(256)) * (MAX_PAYLOAD // 256 + 2)
payloads = st.one_of(
    st.binary(max_size=300),
    # Long payloads are cheap patterns (drawing 8 KB byte by byte is slow),
    # offset so no two messages carry the same bytes.
    st.tuples(st.sampled_from(_EDGE_LENS) | st.integers(0, MAX_PAYLOAD), st.integers(0, 255))
    .map(lambda t: _PATTERN[t[1]:t[1] + t[0]]),
)

msgs = st.builds(
    Msg,
    op=st.sampled_from(list(Op)),
    seq=U32, core=U16, dom=U32, nonce=U64, err=U16, status=I32, flags=U8,
    payload=payloads,
)


def slots_of(data: bytes) -> list[bytes]:
    assert len(data) % SLOT == 0
    return [data[i:i + SLOT] for i in range(0, len(data), SLOT)]


def header(op=Op.SPAWN, flags=0, core=0, seq=0, dom=0, err=0, nfrag=0, nonce=0,
           status=0, plen=0, inline=b"") -> bytes:
    """A header slot with every field chosen by hand, lies included."""
    return HEADER.pack(op, flags, core, seq, dom, err, nfrag, nonce, status, plen, inline)


def feed_all(dec: Decoder, data: bytes) -> list:
    return [dec.feed(s) for s in slots_of(data)]


# ---- message round trips ------------------------------------------------------

def test_geometry():
    assert HEADER.size == SLOT == MSG_DTYPE.itemsize == 64
    assert frags_for(MAX_PAYLOAD) == MAX_FRAGS
    # The largest spawn (four fields at the limit, four u16 lengths) must fit.
    assert 8 + 4 * ARG_LIMIT <= MAX_PAYLOAD


@pytest.mark.parametrize(("plen", "nfrag"), [
    (0, 0), (1, 0), (INLINE, 0), (INLINE + 1, 1), (INLINE + SLOT, 1),
    (INLINE + SLOT + 1, 2), (MAX_PAYLOAD, MAX_FRAGS),
])
def test_frags_for_boundaries(plen, nfrag):
    assert frags_for(plen) == nfrag
    assert len(encode(Msg(Op.SPAWN, payload=b"x" * plen))) == SLOT * (1 + nfrag)


@FAST
@given(msgs)
def test_round_trip(m):
    data = encode(m)
    assert len(data) == SLOT * (1 + frags_for(len(m.payload)))
    dec = Decoder()
    results = feed_all(dec, data)
    assert results[:-1] == [None] * (len(results) - 1)
    out = results[-1]
    assert isinstance(out, Msg)
    assert out == m
    assert not dec.partial


@FAST
@given(st.lists(msgs, min_size=1, max_size=6))
def test_back_to_back_messages_through_one_decoder(ms):
    dec = Decoder()
    stream = b"".join(encode(m) for m in ms)
    results = feed_all(dec, stream)
    decoded = [r for r in results if r is not None]
    assert decoded == ms
    assert results.count(None) == len(results) - len(ms)
    assert not dec.partial


@FAST
@given(msgs)
def test_continuations_may_arrive_in_a_later_batch(m):
    """Between two feeds the decoder keeps its state (the batch boundary is
    invisible); ``partial`` tells whether a message is half-way through."""
    dec = Decoder()
    slots = slots_of(encode(m))
    for i, s in enumerate(slots):
        out = dec.feed(s)
        if i < len(slots) - 1:
            assert out is None and dec.partial
    assert out == m and not dec.partial


def test_decoder_accepts_memoryview_slots():
    """A ring hands out views, not copies; the decoder must cope."""
    m = Msg(Op.SD_SPAWN, seq=9, payload=bytes(range(200)))
    view = memoryview(encode(m))
    dec = Decoder()
    results = [dec.feed(view[i:i + SLOT]) for i in range(0, len(view), SLOT)]
    assert results[-1] == m


# ---- numpy dtype ---------------------------------------------------------------

def test_dtype_offsets_agree_with_struct():
    off = 0
    for name, fmt, _ in HEADER_FIELDS:
        assert MSG_DTYPE.fields[name][1] == off, name
        off += struct.calcsize("<" + fmt)
    assert off == MSG_DTYPE.itemsize == HEADER.size


@FAST
@given(msgs)
def test_dtype_fields_equal_msg_fields(m):
    row = np.frombuffer(encode(m)[:SLOT], dtype=MSG_DTYPE)[0]
    for name in ("op", "seq", "core", "dom", "nonce", "err", "status", "flags"):
        assert int(row[name]) == getattr(m, name), name
    assert int(row["plen"]) == len(m.payload)
    assert int(row["nfrag"]) == frags_for(len(m.payload))
    assert bytes(row["inline"]) == m.payload[:INLINE].ljust(INLINE, b"\0")

    rows = encode_rows(m)
    assert rows.dtype == MSG_DTYPE
    assert len(rows) == 1 + frags_for(len(m.payload))
    assert rows.tobytes() == encode(m)


# ---- garbage --------------------------------------------------------------------

# Random bytes are almost always an unknown op; plausible headers (a real op,
# sometimes a consistent nfrag) drive the decoder into its partial state too.
@st.composite
def plausible_headers(draw):
    plen = draw(st.one_of(st.integers(0, 400), st.integers(0, 2**32 - 1)))
    nfrag = draw(st.one_of(st.just(frags_for(min(plen, MAX_PAYLOAD))), U16))
    return header(op=draw(st.one_of(st.sampled_from(VALID_OPS), U8)),
                  flags=draw(U8), seq=draw(U32), nfrag=nfrag, plen=plen,
                  inline=draw(st.binary(max_size=INLINE)))


garbage_slots = st.one_of(
    st.binary(min_size=SLOT, max_size=SLOT),
    plausible_headers(),
    st.binary(max_size=SLOT * 2),          # wrong sizes: truncated or overlong
)


@FAST
@given(st.lists(garbage_slots, max_size=40), msgs)
def test_garbage_never_raises_and_decoder_recovers(garbage, m):
    dec = Decoder()
    for slot in garbage:
        out = dec.feed(slot)
        assert out is None or isinstance(out, (Msg, ProtocolError))
        # None means exactly "more continuation slots to come".
        assert (out is None) == dec.partial
        if isinstance(out, ProtocolError):
            assert out.code == Err.BAD_MESSAGE and str(out)
        if isinstance(out, Msg):
            assert out.op in VALID_OPS and len(out.payload) <= MAX_PAYLOAD
    # A half-read message swallows whatever comes next as its continuation;
    # finish it so the valid message starts on a header.
    for _ in range(MAX_FRAGS):
        if not dec.partial:
            break
        dec.feed(bytes(SLOT))
    assert not dec.partial
    results = feed_all(dec, encode(m))
    assert results[-1] == m
    assert all(r is None for r in results[:-1])


@pytest.mark.parametrize("op", [0, 15, 21, 23, 26, 0x81, 255])
def test_unknown_op(op):
    assert op in UNKNOWN_OPS
    dec = Decoder()
    err = dec.feed(header(op=op, seq=4242))
    assert isinstance(err, ProtocolError)
    assert f"unknown op {op}" in str(err)
    assert (err.op, err.seq, err.code) == (op, 4242, Err.BAD_MESSAGE)
    assert not dec.partial
    m = Msg(Op.KILL, seq=1, dom=3)
    assert dec.feed(encode(m)) == m


def test_reply_flag_is_not_part_of_the_op():
    """REPLY travels in flags; an op with the high bit set is not a reply."""
    m = Msg(Op.WAIT, seq=3, flags=Flag.REPLY)
    assert Decoder().feed(encode(m)) == m
    assert isinstance(Decoder().feed(header(op=Op.WAIT | Flag.REPLY)), ProtocolError)


@pytest.mark.parametrize("op,plen", [
    (Op.KILL, MAX_PAYLOAD + 1), (Op.WAIT, 2**16), (Op.SD_KILL, 2**32 - 1),
    (Op.SPAWN, SPAWN_MAX_PAYLOAD + 1), (Op.SD_SPAWN, 2**32 - 1),
])
def test_plen_over_its_ops_limit(op, plen):
    """Only a spawn may be longer than MAX_PAYLOAD, and only up to
    SPAWN_MAX_PAYLOAD: a header announcing more is refused at once, before
    anything is held for it."""
    dec = Decoder()
    err = dec.feed(header(op=op, seq=7, plen=plen, nfrag=frags_for(plen) & 0xFFFF))
    assert isinstance(err, ProtocolError)
    assert str(plen) in str(err) and "limit" in str(err)
    assert (err.op, err.seq) == (op, 7)
    assert not dec.partial


def test_after_a_truncated_continuation_nothing_is_missing():
    """A message cut short by a short slot is refused, and the decoder
    waits for nothing more of it: the next slot is a header again (a
    count left behind made take() swallow the next messages whole)."""
    dec = Decoder()
    data = encode(Msg(Op.SPAWN, seq=4, payload=b"x" * 300))
    assert dec.feed(data[:SLOT]) is None and dec.missing == 5
    assert isinstance(dec.feed(b"short"), ProtocolError)
    assert dec.missing == 0 and not dec.partial
    assert dec.feed(encode(Msg(Op.WAIT, seq=5))) == Msg(Op.WAIT, seq=5)


def test_a_long_spawn_is_put_together_from_bulk_pieces():
    """A spawn past MAX_PAYLOAD: the Decoder takes its continuation slots
    many at a time (take's bulk pops) and gives the whole payload back."""
    payload = bytes(range(256)) * 1000
    msg = Msg(Op.SPAWN, seq=9, payload=payload)
    data = encode(msg)
    dec = Decoder()
    assert dec.feed(data[:SLOT]) is None and dec.missing == len(data) // SLOT - 1
    for at in range(SLOT, len(data) - 64 * SLOT, 64 * SLOT):
        assert dec.feed(data[at:at + 64 * SLOT]) is None
    got = dec.feed(data[len(data) - SLOT * (dec.missing):])
    assert got == msg and not dec.partial


def test_plen_at_max_payload_is_accepted():
    dec = Decoder()
    assert dec.feed(header(plen=MAX_PAYLOAD, nfrag=MAX_FRAGS)) is None
    assert dec.partial


@pytest.mark.parametrize(("plen", "nfrag"), [
    (100, 0), (10, 3), (INLINE, 1), (INLINE + 1, 0), (INLINE + 1, 2), (MAX_PAYLOAD, 0xFFFF),
])
def test_a_length_that_lies(plen, nfrag):
    dec = Decoder()
    err = dec.feed(header(op=Op.SD_SPAWN, seq=11, plen=plen, nfrag=nfrag))
    assert isinstance(err, ProtocolError)
    assert (f"payload length {plen} needs {frags_for(plen)} continuation slots, "
            f"header says {nfrag}") in str(err)
    assert (err.op, err.seq) == (Op.SD_SPAWN, 11)
    # Only the lying slot is dropped: the next slot is a header again.
    assert not dec.partial
    m = Msg(Op.SD_KILL, seq=12, payload=b"z" * 70)
    assert feed_all(dec, encode(m))[-1] == m


@pytest.mark.parametrize("n", [0, 1, 16, SLOT - 1, SLOT + 1])
def test_truncated_header(n):
    dec = Decoder()
    err = dec.feed(encode(Msg(Op.SPAN, seq=5)).ljust(SLOT * 2, b"\1")[:n])
    assert isinstance(err, ProtocolError)
    assert "truncated" in str(err) and f"{n} of {SLOT}" in str(err)
    assert not dec.partial


@pytest.mark.parametrize("n", [0, 1, SLOT - 1, SLOT + 1])
def test_truncated_continuation(n):
    dec = Decoder()
    m = Msg(Op.SPAWN, seq=99, dom=8, payload=bytes(range(200)))
    first, second, *_ = slots_of(encode(m))
    assert dec.feed(first) is None
    err = dec.feed(second[:n] if n <= SLOT else second + b"!")
    assert isinstance(err, ProtocolError)
    assert "truncated continuation" in str(err) and f"{n} of {SLOT}" in str(err)
    # The error names the message it broke, so its sender can be answered.
    assert (err.op, err.seq) == (Op.SPAWN, 99)
    assert not dec.partial
    again = Msg(Op.SPAWN, seq=100, payload=bytes(range(150)))
    assert feed_all(dec, encode(again))[-1] == again


@pytest.mark.parametrize("op,limit", [(Op.KILL, MAX_PAYLOAD), (Op.SPAWN, SPAWN_MAX_PAYLOAD)])
def test_encode_payload_over_max_raises(op, limit):
    with pytest.raises(ProtocolError, match=f"over the {limit}-byte limit") as exc:
        encode(Msg(op, seq=17, payload=bytes(limit + 1)))
    assert (exc.value.op, exc.value.seq, exc.value.code) == (op, 17, Err.BAD_MESSAGE)
    assert len(encode(Msg(op, payload=bytes(limit)))) == SLOT * (1 + frags_for(limit))


# ---- Msg.reply ------------------------------------------------------------------

@FAST
@given(msgs, st.sampled_from(list(Err)), I32, st.sampled_from([0, Flag.SIGNALED, Flag.STILL_RUNNING]))
def test_reply_keeps_identity_and_sets_reply(m, err, status, flags):
    m.flags &= ~Flag.REPLY
    before = Msg(m.op, m.seq, m.core, m.dom, m.nonce, m.err, m.status, m.flags, m.payload)
    r = m.reply(err, status=status, flags=flags)
    assert (r.op, r.seq, r.dom, r.nonce, r.core) == (m.op, m.seq, m.dom, m.nonce, m.core)
    assert r.flags == flags | Flag.REPLY
    assert r.is_reply and not m.is_reply
    assert (r.err, r.status, r.payload) == (int(err), status, b"")
    assert m == before                      # the request is not touched
    assert Decoder().feed(encode(r)) == r


def test_reply_overrides():
    m = Msg(Op.SPAN, seq=5, core=2, dom=9, nonce=77, flags=Flag.NOHANG)
    r = m.reply(payload=b"ok", dom=10)
    assert (r.dom, r.payload, r.err, r.status) == (10, b"ok", Err.OK, 0)
    assert r.flags == Flag.REPLY             # request flags are not echoed
    assert (r.nonce, r.core) == (77, 2)


# ---- SpawnArgs -----------------------------------------------------------------

no_nul = st.characters(codec="utf-8", exclude_characters="\0")
text = st.text(no_nul, max_size=30)
nonempty = st.text(no_nul, min_size=1, max_size=30)
env_keys = st.text(st.characters(codec="utf-8", exclude_characters="\0="), min_size=1,
                   max_size=20)
caps = st.tuples(st.integers(0, 1023), st.sampled_from(["r", "w", "a", "rw"]), nonempty)
argvs = st.lists(text, max_size=8)

spawn_args = st.builds(
    SpawnArgs,
    path=nonempty,
    argv=argvs,
    env=st.none() | st.dictionaries(env_keys, text, max_size=6),
    caps=st.lists(caps, max_size=6),
    settings=st.dictionaries(st.sampled_from(SETTINGS), nonempty, max_size=4),
)


@FAST
@given(spawn_args)
def test_spawn_args_round_trip(args):
    payload = args.encode()
    assert SpawnArgs.decode(payload) == args
    # ... and through a whole message.
    m = Msg(Op.SPAWN_WITH_CAPS, seq=1, payload=payload)
    assert SpawnArgs.decode(feed_all(Decoder(), encode(m))[-1].payload) == args


def test_spawn_args_argv_single_empty_string():
    args = SpawnArgs("/bin/prog", [""])
    assert SpawnArgs.decode(args.encode()).argv == [""]


def test_env_none_and_empty_differ():
    none, empty = SpawnArgs("p", ["p"], None), SpawnArgs("p", ["p"], {})
    assert none.encode() != empty.encode()
    assert SpawnArgs.decode(none.encode()).env is None
    assert SpawnArgs.decode(empty.encode()).env == {}


def _at(n: int) -> dict[str, SpawnArgs]:
    """SpawnArgs with one field exactly ``n`` bytes long, per field."""
    return {
        "path": SpawnArgs("p" * n, []),
        # list items are each ended by a NUL, which counts
        "argv": SpawnArgs("p", ["a" * (n // 2 - 1), "b" * (n - n // 2 - 1)]),
        "env": SpawnArgs("p", [], {"K": "v" * (n - 3)}),
        "caps": SpawnArgs("p", [], None, [(3, "r", "x" * (n - 5))]),
    }


@pytest.mark.parametrize("name", ["path", "argv", "env", "caps"])
def test_field_at_limit_is_accepted(name):
    args = _at(ARG_LIMIT)[name]
    payload = args.encode()
    assert SpawnArgs.decode(payload) == args
    assert len(payload) == 8 + ARG_LIMIT + (1 if name != "path" else 0)


_LIMIT = {"path": ARG_LIMIT, "argv": LONG_ARG_LIMIT, "env": LONG_ARG_LIMIT, "caps": ARG_LIMIT}


@pytest.mark.parametrize("name", ["path", "argv", "env", "caps"])
def test_field_over_limit_raises_arg_too_long(name):
    """Refused before anything is sent, both sizes in the words."""
    limit = _LIMIT[name]
    with pytest.raises(ArgTooLong) as exc:
        _at(limit + 1)[name].encode()
    assert exc.value.code == Err.ARG_TOO_LONG
    assert isinstance(exc.value, ProtocolError)
    assert str(exc.value) == f"{name} is {limit + 1} bytes, over the {limit}-byte limit"


@pytest.mark.parametrize("name", ["argv", "env"])
@pytest.mark.parametrize("size", [ARG_LIMIT + 1, 128 * 1024, LONG_ARG_LIMIT])
def test_long_argv_and_env_travel_wide(name, size):
    """Past the original's 2 KiB an argv or env goes in the wide layout
    (u32 lengths), up to LONG_ARG_LIMIT, with every flag bit kept."""
    args = _at(size)[name]
    args.cwd, args.stop = "/tmp", (15, 500)
    if name == "env":
        args.env_adds = True
    payload = args.encode()
    assert payload[:4] == b"\xff\xff\0\0"
    assert len(payload) == 20 + 1 + size + len("/tmp\0" "15:500\0")
    assert SpawnArgs.decode(payload) == args


def test_short_spawns_keep_the_narrow_layout():
    """A spawn within the original's limits pays nothing for the wide one."""
    payload = _at(ARG_LIMIT)["argv"].encode()
    assert payload[:2] != b"\xff\xff" and len(payload) == 8 + 1 + ARG_LIMIT


def test_multibyte_characters_count_as_bytes():
    SpawnArgs("é" * (ARG_LIMIT // 2), []).encode()
    with pytest.raises(ArgTooLong):
        SpawnArgs("é" * (ARG_LIMIT // 2) + "x", []).encode()


def test_every_field_at_limit_fits_one_message():
    big = SpawnArgs("p" * ARG_LIMIT, ["a" * (ARG_LIMIT - 1)], {"K": "v" * (ARG_LIMIT - 3)},
                    [(7, "rw", "c" * (ARG_LIMIT - 6))])
    m = Msg(Op.SPAWN_WITH_CAPS, seq=3, payload=big.encode())
    assert len(m.payload) <= MAX_PAYLOAD
    assert SpawnArgs.decode(feed_all(Decoder(), encode(m))[-1].payload) == big


def test_settings_travel_between_the_stop_and_the_caps():
    args = SpawnArgs("p", ["p"], None, [(0, "r", "/in")], cwd="/tmp", stop=(15, 500),
                     settings={"limit.nofile": "32:64", "user": "nobody", "umask": "27"})
    assert SpawnArgs.decode(args.encode()) == args


def test_settings_are_checked_before_sending():
    with pytest.raises(ValueError, match="not a spawn setting"):
        SpawnArgs("p", ["p"], settings={"limit.stack": "1:1"}).encode()
    with pytest.raises(ValueError, match="no value"):
        SpawnArgs("p", ["p"], settings={"user": ""}).encode()


def _spawn_payload(path=b"p", argv=b"", env=b"", caps=b"", env_given=False, lens=None):
    lens = lens or (len(path), len(argv), len(env) | (0x8000 if env_given else 0), len(caps))
    return struct.pack("<HHHH", *lens) + path + argv + env + caps


def test_decode_hand_built_payload():
    p = _spawn_payload(b"/bin/x", b"x\0-v\0", b"A=1\0B=\0", b"0:r:/in\x001:w:/out\0", True)
    assert SpawnArgs.decode(p) == SpawnArgs("/bin/x", ["x", "-v"], {"A": "1", "B": ""},
                                            [(0, "r", "/in"), (1, "w", "/out")])


@pytest.mark.parametrize("payload", [
    _spawn_payload() + b"x",
    _spawn_payload(b"prog")[:-1],
    _spawn_payload(lens=(1, 0, 0, 0xFFFF)),
    _spawn_payload(lens=(1, 0, 0x8001, 0)),
], ids=["extra-byte", "missing-byte", "caps-length-lies", "env-given-bit-plus-length"])
def test_decode_lying_lengths(payload):
    with pytest.raises(ProtocolError, match=r"spawn payload is \d+ bytes but its fields add up to \d+"):
        SpawnArgs.decode(payload)


@pytest.mark.parametrize("n", range(8))
def test_decode_shorter_than_length_fields(n):
    with pytest.raises(ProtocolError, match="shorter than its length fields"):
        SpawnArgs.decode(bytes(n))


def test_decode_length_field_over_limit():
    with pytest.raises(ArgTooLong, match="path is 2049 bytes, over the 2048-byte limit"):
        SpawnArgs.decode(_spawn_payload(path=b"a" * (ARG_LIMIT + 1)))
    wide = struct.pack("<HHIIII", 0xFFFF, 0, 1, LONG_ARG_LIMIT + 1, 0, 0)
    with pytest.raises(ArgTooLong, match=f"argv is {LONG_ARG_LIMIT + 1} bytes"):
        SpawnArgs.decode(wide + b"p" + b"a" * (LONG_ARG_LIMIT + 1))


@pytest.mark.parametrize("payload", [
    struct.pack("<HHII", 0xFFFF, 0, 1, 0),                       # lengths cut short
    struct.pack("<HHIIII", 0xFFFF, 1, 1, 0, 0, 0) + b"p",        # the pad is not 0
    struct.pack("<HHIIII", 0xFFFF, 0, 1, 0xFFFFFFFF, 0, 0) + b"p",   # a length that lies
], ids=["short", "pad", "lying-length"])
def test_decode_bad_wide_payload(payload):
    with pytest.raises(ProtocolError, match="wide spawn payload shorter|pad after its mark|add up to"):
        SpawnArgs.decode(payload)


@pytest.mark.parametrize("where", ["path", "argv", "env", "caps"])
def test_bytes_that_are_not_utf8_pass_through(where):
    """As execve takes them: decoded as os.fsdecode does, so os.fsencode
    gives back the very bytes."""
    bad = b"\xff\xfe"
    kw = {"path": b"p", "env_given": True,
          **{where: bad if where == "path" else (b"K=" + bad + b"\0" if where == "env" else
                                                  (b"3:r:" + bad + b"\0" if where == "caps"
                                                   else bad + b"\0"))}}
    args = SpawnArgs.decode(_spawn_payload(**kw))
    got = {"path": lambda: args.path, "argv": lambda: args.argv[0],
           "env": lambda: args.env["K"], "caps": lambda: args.caps[0][2]}[where]()
    assert os.fsencode(got) == bad
    assert SpawnArgs.decode(args.encode()) == args


def test_decode_empty_path():
    with pytest.raises(ProtocolError, match="without a program path"):
        SpawnArgs.decode(_spawn_payload(path=b""))


@pytest.mark.parametrize("entry", [b"NOEQUALS\0", b"=value\0", b"A=1\0B\0"])
def test_decode_env_entry_without_key_value(entry):
    with pytest.raises(ProtocolError, match="is not KEY=VALUE"):
        SpawnArgs.decode(_spawn_payload(env=entry, env_given=True))


@pytest.mark.parametrize("cap", [b"3", b"3:r", b"3:r:", b"x:r:/f", b"-1:r:/f", b"1024:r:/f",
                                 b"3:rx:/f", b":r:/f", b"3::/f", b" 3:r:/f"])
def test_decode_bad_cap(cap):
    with pytest.raises(ProtocolError, match="is not FD:MODE:PATH"):
        SpawnArgs.decode(_spawn_payload(caps=cap + b"\0"))


@pytest.mark.parametrize("field", ["argv", "env", "caps"])
def test_decode_list_without_terminator(field):
    with pytest.raises(ProtocolError, match="does not end with its NUL terminator"):
        SpawnArgs.decode(_spawn_payload(**{field: b"A=1", "env_given": True}))


def test_argv_of_one_empty_string_differs_from_none():
    assert SpawnArgs.decode(SpawnArgs("p", [""]).encode()).argv == [""]
    assert SpawnArgs.decode(SpawnArgs("p", []).encode()).argv == []


def test_the_stream_cap_modes_round_trip():
    caps = [(0, "n", ""), (1, "log", "4096:3"), (2, "dup", "1"), (2, "log", ""),
            (1, "inherit", "1234:1")]
    for cap in caps:
        assert SpawnArgs.decode(SpawnArgs("p", ["p"], None, [cap]).encode()).caps == [cap]


@pytest.mark.parametrize(("cap", "why"), [
    (b"3:log:", "only stdout and stderr can be captured"),
    (b"1:log:0:1", "are not MAX_BYTES:BACKUPS"),
    (b"1:log:4096", "are not MAX_BYTES:BACKUPS"),
    (b"1:log:x:1", "are not MAX_BYTES:BACKUPS"),
    (b"2:dup:2", "not another descriptor"),
    (b"2:dup:", "not another descriptor"),
    (b"2:dup:1024", "not another descriptor"),
    (b"1:n:/dev/null", "to /dev/null has text"),
    (b"0:inherit:1:0", "only stdout and stderr can be inherited"),
    (b"1:inherit:0:1", "is not PID:FD"),
    (b"1:inherit:12", "is not PID:FD"),
    # settings travel in the same field, told apart by their first letter
    (b"limit.stack=1:1", "nor a setting NAME=VALUE with a known NAME"),
    (b"user=", "has no value"),
    (b"nobody", "nor a setting NAME=VALUE with a known NAME"),
    (b"umask=22\0umask=27", "given twice"),
])
def test_decode_bad_stream_cap_says_why(cap, why):
    with pytest.raises(ProtocolError, match=why):
        SpawnArgs.decode(_spawn_payload(caps=cap + b"\0"))


def test_argv_that_is_the_path_travels_as_a_bit():
    """The usual argv == [path] costs no bytes: /bin/true with both streams
    to /dev/null stays one slot (32 bytes inline)."""
    args = SpawnArgs("/bin/true", ["/bin/true"], None, [(1, "n", ""), (2, "n", "")])
    payload = args.encode()
    assert len(payload) <= 32 and SpawnArgs.decode(payload) == args
    assert SpawnArgs.decode(SpawnArgs("/bin/true", ["true"]).encode()).argv == ["true"]
    # a payload saying both "argv is [path]" and giving entries is refused
    with pytest.raises(ProtocolError, match="says argv is"):
        SpawnArgs.decode(_spawn_payload(argv=b"x\0", lens=(1, 2 | 0x8000, 0, 0)))


def test_decode_cap_path_may_hold_colons():
    args = SpawnArgs.decode(_spawn_payload(caps=b"5:a:/tmp/a:b:c\0"))
    assert args.caps == [(5, "a", "/tmp/a:b:c")]


def test_decode_cap_superscript_digit_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="is not FD:MODE:PATH"):
        SpawnArgs.decode(_spawn_payload(caps="²:r:/f\0".encode()))


@pytest.mark.parametrize("args", [
    SpawnArgs("p", ["ok", "bad\0arg"]),
    SpawnArgs("p", [], {"K": "v\0"}),
    SpawnArgs("p", [], {"K\0": "v"}),
    SpawnArgs("p", [], None, [(3, "r", "/a\0b")]),
])
def test_encode_nul_is_value_error(args):
    with pytest.raises(ValueError, match="contains a NUL byte"):
        args.encode()


@pytest.mark.parametrize(("cap", "what"), [
    ((-1, "r", "/f"), "descriptor"), ((1024, "r", "/f"), "descriptor"),
    (("3", "r", "/f"), "descriptor"), ((3, "x", "/f"), "mode"), ((3, "", "/f"), "mode"),
])
def test_encode_bad_cap_is_value_error(cap, what):
    with pytest.raises(ValueError, match=f"cap {what}"):
        SpawnArgs("p", [], None, [cap]).encode()


@pytest.mark.parametrize("env", [{"": "=x"}, {"A=B": "c"}])
def test_encode_rejects_env_keys_that_cannot_round_trip(env):
    with pytest.raises(ValueError):
        SpawnArgs("p", [], env).encode()


def test_encode_rejects_cap_with_empty_path():
    with pytest.raises(ValueError):
        SpawnArgs("p", [], None, [(3, "r", "")]).encode()


# ---- StatusInfo -----------------------------------------------------------------

@st.composite
def status_infos(draw):
    placed = draw(st.lists(st.tuples(U16, I32), max_size=8))
    return StatusInfo(
        state=draw(U8),
        exit_status=draw(st.none() | I32),
        signaled=draw(st.booleans()),
        cores=[c for c, _ in placed],
        pids=[p for _, p in placed],
        argv=draw(argvs),
        usage=draw(st.none() | st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                                         st.integers(0, 2**32 - 1))),
    )


@FAST
@given(status_infos())
def test_status_info_round_trip(info):
    assert StatusInfo.decode(info.encode()) == info


def test_status_exit_zero_differs_from_none():
    zero = StatusInfo(2, 0, False, [1], [100], ["x"])
    none = StatusInfo(2, None, False, [1], [100], ["x"])
    assert StatusInfo.decode(zero.encode()).exit_status == 0
    assert StatusInfo.decode(none.encode()).exit_status is None


def test_status_decode_short():
    with pytest.raises(ProtocolError, match="shorter than its header"):
        StatusInfo.decode(b"\0" * 7)
    head = struct.pack("<BBiH", 1, 0, 0, 3)
    with pytest.raises(ProtocolError, match="too short for 3 cores"):
        StatusInfo.decode(head + bytes(2 * 3 + 4 * 3 - 1))


def test_status_argv_that_is_not_utf8_comes_back_as_it_went():
    info = StatusInfo.decode(struct.pack("<BBiHddQQI", 1, 0, 0, 0, 1.5, 0.0, 0, 0, 0) +
                             b"\xff\0")
    assert (info.started, info.ended) == (1.5, None)
    assert [os.fsencode(a) for a in info.argv] == [b"\xff"]
    assert StatusInfo.decode(info.encode()) == info


@pytest.mark.parametrize("started, ended", [(float("nan"), float("inf")), (-1.0, -5.0)])
def test_status_times_that_are_no_times_are_none(started, ended):
    info = StatusInfo.decode(struct.pack("<BBiHddQQI", 1, 0, 0, 0, started, ended, 0, 0, 0))
    assert (info.started, info.ended) == (0.0, None)
    assert StatusInfo.decode(info.encode()) == info


def test_status_long_argv_truncation_stays_decodable():
    info = StatusInfo(1, None, False, [], [], ["a" * (ARG_LIMIT - 1) + "é"])
    out = StatusInfo.decode(info.encode())
    assert len("\0".join(out.argv).encode()) <= ARG_LIMIT


# ---- domain id lists ------------------------------------------------------------

@FAST
@given(st.lists(U32, max_size=300))
def test_ids_round_trip(ids):
    payload = encode_ids(ids)
    assert len(payload) == 4 * len(ids)
    assert decode_ids(payload) == ids
    m = Msg(Op.GET_DOMAINLIST, payload=payload)
    assert decode_ids(feed_all(Decoder(), encode(m))[-1].payload) == ids


def test_ids_are_little_endian():
    assert encode_ids([1, 0x01020304]) == b"\1\0\0\0\4\3\2\1"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 401])
def test_decode_ids_partial_id(n):
    with pytest.raises(ProtocolError, match=f"{n} bytes is not whole u32 ids"):
        decode_ids(bytes(n))


# ---- the C hot path (procmgr/protocol/_wire.c): send and take through a real ring ------


@pytest.fixture
def wire_ring(shm_name):
    """(producer, consumer) ends of one ring, for send/take."""
    prod = ringbuf.Ring.create(shm_name, 64)
    cons = ringbuf.Ring.attach(shm_name)
    yield prod, cons
    cons.close()
    prod.close()
    prod.unlink()


@FAST
@given(st.lists(msgs, min_size=1, max_size=8))
def test_send_and_take_round_trip_as_the_python_codec_does(ms):
    # Short messages go slot <-> object in C, longer ones through encode and
    # the Decoder: the bytes in the ring and what comes out are the same either way.
    name = ringbuf.unique_name("procmgr-test")
    with ringbuf.Ring.create(name, 1024) as prod, ringbuf.Ring.attach(name) as cons:
        for m in ms:
            assert send(prod, m)
        slots = [bytes(row) for row in cons.pop_many(1024, timeout=0)]
        assert b"".join(slots) == b"".join(encode(m) for m in ms)
        for m in ms:
            assert send(prod, m)
        assert take(cons, Decoder()) == ms


def test_take_stops_in_front_of_a_bad_slot_and_the_decoder_answers_it(wire_ring):
    prod, cons = wire_ring
    good = Msg(Op.KILL, seq=1, dom=3)
    bad = HEADER.pack(250, 0, 0, 2, 0, 0, 0, 0, 0, 0, b"")       # unknown op 250
    lying = HEADER.pack(Op.WAIT, 0, 0, 3, 0, 0, 1, 0, 0, 5, b"")  # 5 bytes, 1 frag
    for data in (encode(good), bad, lying, encode(good), b"\1" * 10, encode(good)):
        assert prod.try_push(data)
    out = take(cons, Decoder())
    assert out[0] == good and out[3] == good and out[-1] == good
    assert isinstance(out[1], ProtocolError) and "unknown op 250" in str(out[1])
    assert isinstance(out[2], ProtocolError) and (out[2].op, out[2].seq) == (Op.WAIT, 3)
    assert isinstance(out[4], ProtocolError) and "truncated" in str(out[4])
    assert len(out) == 6


def test_take_respects_its_limit_and_keeps_fragments_together(wire_ring):
    prod, cons = wire_ring
    long = Msg(Op.SPAWN, seq=7, payload=bytes(range(150)))        # 1 + 2 slots
    for m in (Msg(Op.WAIT, seq=1), long, Msg(Op.WAIT, seq=2), Msg(Op.WAIT, seq=3)):
        assert send(prod, m)
    dec = Decoder()
    assert take(cons, dec, limit=2) == [Msg(Op.WAIT, seq=1), long]
    assert take(cons, dec, limit=1) == [Msg(Op.WAIT, seq=2)]
    assert take(cons, dec) == [Msg(Op.WAIT, seq=3)]
    assert take(cons, dec) == []


def test_send_says_full_and_writes_nothing(shm_name):
    with ringbuf.Ring.create(shm_name, 2) as prod, ringbuf.Ring.attach(shm_name) as cons:
        assert send(prod, Msg(Op.WAIT, seq=1)) and send(prod, Msg(Op.WAIT, seq=2))
        assert not send(prod, Msg(Op.WAIT, seq=3))
        assert not send(prod, Msg(Op.SPAWN, seq=4, payload=bytes(100)))
        assert take(cons, Decoder()) == [Msg(Op.WAIT, seq=1), Msg(Op.WAIT, seq=2)]


def test_send_on_a_closed_peer_raises_closed(wire_ring):
    prod, cons = wire_ring
    cons.close()
    with pytest.raises(ringbuf.Closed):
        send(prod, Msg(Op.WAIT, seq=1))


@pytest.mark.parametrize("field,value", [
    ("op", 256), ("flags", -1), ("core", 0x10000), ("seq", 2**32), ("dom", -5),
    ("err", 2**16), ("nonce", 2**64), ("status", 2**31), ("status", "x"), ("seq", 1.5),
])
def test_a_field_that_does_not_fit_is_named(wire_ring, field, value):
    prod, cons = wire_ring
    m = Msg(Op.WAIT, seq=1)
    setattr(m, field, value)
    with pytest.raises(OverflowError, match=f"Msg.{field} ="):
        send(prod, m)
    assert take(cons, Decoder()) == []        # nothing half-written


def test_msg_object_behaves_like_a_record():
    m = Msg(Op.SPAWN, 5, payload=b"p")
    assert m == Msg(Op.SPAWN, seq=5, core=0, dom=0, nonce=0, err=0, status=0, flags=0,
                    payload=b"p")
    assert m != Msg(Op.SPAWN, 6, payload=b"p") and m != (Op.SPAWN, 5)
    assert "seq=5" in repr(m) and "payload=b'p'" in repr(m)
    m.dom = 9
    assert m.dom == 9
    with pytest.raises(TypeError):
        hash(m)
    with pytest.raises(TypeError, match="unexpected keyword"):
        Msg(Op.SPAWN, colour=1)
    with pytest.raises(TypeError, match="twice"):
        Msg(Op.SPAWN, 1, seq=2)
    with pytest.raises(TypeError, match="needs an op"):
        Msg(seq=2)
    with pytest.raises(TypeError, match="cannot set"):
        m.reply(seq=3)
    # Built through the tuple/dict entry too (functools.partial, hypothesis).
    assert functools.partial(Msg, Op.KILL, dom=4)(seq=8) == Msg(Op.KILL, 8, dom=4)



def test_a_field_cut_in_a_character_keeps_its_bytes():
    """The reader is C (spawn_payload.h): a byte it cannot decode is kept
    as Python's os.fsdecode keeps it, NUL terminators still found."""
    payload = struct.pack("<HHHH", 2, 2, 0, 0) + b"/x" + b"\xc3\0"
    assert [os.fsencode(a) for a in SpawnArgs.decode(payload).argv] == [b"\xc3"]
    assert SpawnArgs.decode(bytearray(SpawnArgs("/x", ["a", ""]).encode())).argv == ["a", ""]


def test_a_working_directory_and_added_env_travel_and_cost_a_plain_spawn_nothing():
    plain = SpawnArgs("/bin/true", ["/bin/true"])
    placed = SpawnArgs("/bin/true", ["/bin/true"], {"A": "1"}, [(1, "n", "")], "/tmp",
                       env_adds=True)
    assert SpawnArgs.decode(placed.encode()) == placed
    assert SpawnArgs.decode(plain.encode()).cwd is None
    assert len(SpawnArgs("/bin/true", ["/bin/true"], cwd="/").encode()) == \
        len(plain.encode()) + 2                                # "/" and its NUL, no more
    with pytest.raises(ValueError, match="env_adds"):
        SpawnArgs("p", ["p"], None, env_adds=True).encode()


@pytest.mark.parametrize("lens, body, words", [
    ((1, 0x8000, 0x4000, 0), b"p", "adds to an environment it does not give"),
    ((1, 0x8000, 0, 0x8000), b"p", "working directory is given but has none"),
    ((1, 0x8000, 0, 0x8001), b"p\0", "working directory is empty"),
])
def test_a_payload_that_lies_about_its_cwd_or_env_is_refused_saying_so(lens, body, words):
    import struct

    with pytest.raises(ProtocolError, match=words):
        SpawnArgs.decode(struct.pack("<HHHH", *lens) + body)


def test_how_a_spawn_stops_travels_and_a_lie_about_it_is_refused():
    import struct

    args = SpawnArgs("/bin/x", ["/bin/x"], None, [(1, "n", "")], "/tmp", stop=(2, 5000))
    assert SpawnArgs.decode(args.encode()) == args
    assert SpawnArgs.decode(SpawnArgs("/x", ["/x"], stop=(15, 0)).encode()).stop == (15, 0)
    for bad in (b"0:10\0", b"65:10\0", b"15\0", b"15:4294967296\0", b"x:1\0"):
        with pytest.raises(ProtocolError, match="SIGNAL:GRACE_MS"):
            SpawnArgs.decode(struct.pack("<HHHH", 1, 0x8000, 0, 0x4000 | len(bad)) + b"p" + bad)


def test_a_list_of_too_many_items_is_refused_before_it_is_made():
    """Counted in C before a str is made: half a million one-byte items
    took the manager's one thread ~35 ms to build and then refuse."""
    items = 131_073
    with pytest.raises(ArgTooLong, match=f"a list of {items} items, over the 131072-item"):
        SpawnArgs.decode(SpawnArgs("p", ["a"] * items).encode())
    assert len(SpawnArgs.decode(SpawnArgs("p", ["a"] * 131_072).encode()).argv) == 131_072
