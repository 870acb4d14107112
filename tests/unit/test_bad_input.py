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


def _begin_long_spawn(client, seq: int, plen: int, pieces: int) -> bytes:
    """The header of a long spawn of ``plen`` bytes and ``pieces`` of its
    continuation slots, pushed by hand; the slots still to send."""
    nfrag = -(-(plen - 32) // 64)
    client.requests.try_push(HEADER.pack(Op.SPAWN, 0, 0, seq, 0, 0, nfrag, 0, 0, plen,
                                         b"\0" * 32))
    rest = b"\0" * 64 * nfrag
    assert client.requests.push_slots(rest[:64 * pieces]) == pieces
    return rest[64 * pieces:]


def test_long_spawns_half_received_are_bounded_over_all_clients():
    """A client that starts a long spawn and sends no more holds the manager
    to what it announced, within one bound for all clients: a long spawn
    past it is read on, dropped and answered BUSY in words -- the stream
    stays whole, the next request is served -- and what a message held is
    given back when it ends, or when its client goes."""
    with InProcessRuntime(cores=1, prefix="procmgr-test", ring_capacity=1 << 15) as rt:
        held = rt.manager.long_held
        held.limit = (2 << 20) + (1 << 19)
        hoarder, other, leaver = rt.client(), rt.client(), rt.client()
        fut = hoarder.expect(901, Op.SPAWN)
        rest = _begin_long_spawn(hoarder, 901, 2 << 20, 100)
        rt.pump()
        assert held.held == 2 << 20 and not fut.done()

        args = ["prog"] + ["x" * 100_000] * 10                   # 1 MB: past the bound
        try:
            other.spawn(args, timeout=5)
        except ProcMgmtError as e:
            assert e.code == Err.BUSY
            assert f"{2 << 20} bytes of long requests half received" in str(e)
        else:
            raise AssertionError("a long spawn past the bound was taken")
        assert held.held == 2 << 20
        assert other.spawn(["prog"], timeout=5).id > 0            # the stream is whole

        _begin_long_spawn(leaver, 902, 1 << 18, 10)
        rt.pump()
        assert held.held == (2 << 20) + (1 << 18)
        leaver.requests.close()                                   # gone mid-message
        rt.pump()
        assert held.held == 2 << 20

        assert hoarder.requests.push_slots(rest) == len(rest) // 64
        rt.pump()
        hoarder.poll()
        assert held.held == 0
        try:
            fut.result(0)
        except ProcMgmtError as e:                                # zeros: not a spawn
            assert e.code == Err.BAD_MESSAGE
        assert other.spawn(args, timeout=5).id > 0                # room again


def test_a_long_spawn_goes_through_the_pumped_in_process_runtime():
    """Longer than its rings: the sender pumps the runtime while it waits
    for room, as it takes answers in."""
    with InProcessRuntime(cores=1, prefix="procmgr-test", ring_capacity=1024) as rt:
        client = rt.client()
        d = client.spawn(["prog"] + ["x" * 100_000] * 4, timeout=5)
        argv = rt.manager.core.domain(d.id)["argv"]
        # What the domain keeps is what status shows: cut at 2 KiB.
        assert argv == ["prog"]
