"""Garbage from one client never crashes the manager nor costs another
client its answers."""

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from procmgr.errors import Err, ProcMgmtError
from procmgr.testing.inprocess import InProcessRuntime
from procmgr.protocol import HEADER, Op

slots = st.binary(min_size=64, max_size=64)


@settings(max_examples=60, deadline=None)
@given(st.lists(slots, min_size=1, max_size=20))
def test_random_slots_from_one_client(garbage):
    with InProcessRuntime(cores=2, prefix="procmgr-test") as rt:
        good, bad = rt.client(), rt.client()
        futures = [good.spawn_async(["prog"], core=i % 2) for i in range(5)]
        for slot in garbage:
            bad.requests.try_push(slot)
        futures += [good.spawn_async(["prog"], core=1)]
        doms = [good.wait_for(f, timeout=5) for f in futures]
        assert len({d.id for d in doms}) == 6
        for d in doms:
            good.kill(d, timeout=5)
            assert good.wait(d, timeout=5) == 9
        mgr = rt.manager
        assert mgr.internal_errors == 0
        # Whatever the garbage asked for was answered or refused; nothing is owed.
        rt.pump()
        assert all(not c.outstanding for c in mgr.clients.values())


def test_lying_header_is_answered_with_bad_message():
    with InProcessRuntime(cores=1, prefix="procmgr-test") as rt:
        client = rt.client()
        # A spawn whose payload length needs 3 continuation slots, header says 1.
        head = HEADER.pack(Op.SPAWN, 0, 0, 77, 0, 0, 1, 0, 0, 200, b"\0" * 32)
        fut = client.expect(77, Op.SPAWN)
        client.requests.try_push(head)
        rt.pump()
        client.poll()
        try:
            fut.result()
        except ProcMgmtError as e:
            assert e.code == Err.BAD_MESSAGE
            assert "continuation" in str(e)
        else:
            raise AssertionError("a lying header was accepted")


def test_truncated_and_short_messages():
    with InProcessRuntime(cores=1, prefix="procmgr-test") as rt:
        client = rt.client()
        client.requests.try_push(b"\x01\x00")              # 2 bytes: truncated
        client.requests.try_push(os.urandom(63))            # one byte short
        client.requests.try_push(struct.pack("<B", 200) + bytes(63))  # unknown op, seq 0
        dom = client.spawn(["ok"], timeout=5)               # still served, in order
        assert dom.id >= 1
        assert rt.manager.protocol_errors >= 3
