"""Fuzzing the message decoder and the payload decoders.

test_protocol.py spells out each error case and fuzzes whole 64-byte
slots; here the input is a raw byte stream cut anywhere, and valid messages
and payloads with bytes overwritten, cut or inserted -- what a buggy or
hostile peer writes into a ring. Every input goes through the checks of
decoder_fuzz.py. The atheris target (coverage-guided) runs for a few
seconds when atheris is installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoder_fuzz import check_payload, check_slots
from procmgr.protocol import SLOT, Msg, Op, SpawnArgs, StatusInfo, encode, encode_ids

# No example database (nothing written into the tree); no speed health check:
# the suite shares 2 CPUs.
QUIET = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150, **QUIET)
TARGET = Path(__file__).with_name("fuzz_decoder_target.py")

no_nul = st.characters(codec="utf-8", exclude_characters="\0")   # what encode can send
spawn_payloads = st.builds(
    SpawnArgs,
    path=st.text(no_nul, min_size=1, max_size=40),
    argv=st.lists(st.text(no_nul, max_size=60), max_size=8),
    env=st.none() | st.dictionaries(st.sampled_from(["A", "PATH", "K_1"]),
                                    st.text(no_nul, max_size=40)),
    caps=st.lists(st.tuples(st.integers(0, 1023), st.sampled_from(["r", "w", "a", "rw"]),
                            st.sampled_from(["/tmp/x", "/dev/null", "a:b"])), max_size=3),
).map(lambda a: a.encode())
valid_payloads = st.one_of(
    spawn_payloads,
    st.lists(st.integers(0, 2**32 - 1), max_size=40).map(encode_ids),
    st.builds(lambda argv: StatusInfo(1, 0, False, [0], [1234], argv).encode(),
              st.lists(st.text(no_nul, max_size=20), max_size=5)),
)
valid_messages = st.builds(
    lambda op, seq, payload: encode(Msg(op, seq, payload=payload)),
    st.sampled_from(list(Op)), st.integers(0, 2**32 - 1), valid_payloads)


@st.composite
def mutated(draw, data_strategy):
    """Valid bytes with a few overwrites, a cut and an insertion."""
    data = bytearray(draw(data_strategy))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=8))
    return bytes(data)


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` as slots of the sizes given (0: a whole slot), then whole slots."""
    slots, i = [], 0
    for size in sizes:
        if i >= len(data):
            break
        slots.append(data[i:i + (size or SLOT)])
        i += size or SLOT
    return slots + [data[j:j + SLOT] for j in range(i, len(data), SLOT)]


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.sampled_from([0, 0, 0, 1, 32, 63, 65, 128]),
                                          max_size=20))
def test_any_byte_stream_cut_anywhere(data, sizes):
    check_slots(cut(data, sizes))


@FUZZ
@given(st.lists(mutated(valid_messages), min_size=1, max_size=4),
       st.lists(st.sampled_from([0, 0, 0, 0, 17, 63, 64, 65]), max_size=10))
def test_valid_messages_mutated_and_cut(messages, sizes):
    check_slots(cut(b"".join(messages), sizes))


@FUZZ
@given(st.binary(max_size=600) | mutated(valid_payloads))
def test_payload_decoders_on_any_bytes(payload):
    check_payload(payload)


@settings(max_examples=50, **QUIET)
@given(valid_messages)
def test_unmutated_messages_all_decode(data):
    """The fuzz's baseline: what the mutations start from is itself accepted."""
    assert len(check_slots(cut(data, []))) == 1


def test_atheris_target_runs_bounded(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = [encode(Msg(Op.SPAWN, 7, payload=SpawnArgs("/bin/true", ["true", "-x"],
                                                      {"A": "1"}, [(1, "w", "/o")]).encode())),
             encode(Msg(Op.GET_DOMAINLIST, 8, payload=encode_ids([1, 2, 3])))]
    for i, seed in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(b"\1" + seed)
    proc = subprocess.run(
        [sys.executable, str(TARGET), "-max_total_time=2", "-rss_limit_mb=1024",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done" in proc.stderr and "INITED" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*"))
