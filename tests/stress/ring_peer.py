"""The far end of the stress tests' scenarios that ``ringbuf.stream`` does not
cover: ping-pong, a peer that blocks and reports how its wait ended, a peer
that closes once the other side is asleep, a peer that only waits to be killed.

Run as ``python tests/stress/ring_peer.py MODE NAME [options]``. Every mode
that ends by itself prints one JSON line on stdout (what happened, with
``time.monotonic()`` stamps, which are comparable across processes: the clock
is system-wide). Messages carry an 8-byte little-endian sequence number.

``--create CAPACITY`` makes this process the creator of the ring instead of
the attacher (the test's ``shm_name`` fixture still unlinks it);
``--unlink`` removes the name when the mode ends, as a creator's ``with``
block would.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import time

from ringbuf import PeerDied, Ring, RingException

SEQ = struct.Struct("<Q")
# Longest any mode waits for something the test is expected to bring about;
# a wait that runs out is reported, never silently extended.
DEADLINE = 20.0


def _open(args, name: str) -> Ring:
    if args.create:
        return Ring.create(name, args.create)
    return Ring.attach(name)


def _error_name(exc: BaseException | None) -> str | None:
    return None if exc is None else type(exc).__name__


def _push_after(ring: Ring) -> str | None:
    """What a push does once this side's wait has ended with an error."""
    try:
        ring.try_push(SEQ.pack(0))
    except RingException as exc:
        return _error_name(exc)
    return None


def mode_consume(args, ring: Ring) -> dict:
    """Pop with ``--timeout`` (default: forever) until an exception or
    ``--max`` messages; check the sequence numbers on the way."""
    got, errors, error, t_error = 0, [], None, None
    try:
        while args.max is None or got < args.max:
            (seq,) = SEQ.unpack_from(ring.pop(args.timeout))
            if seq != got and not errors:
                errors.append(f"message {got} carried seq {seq}")
            got += 1
    except RingException as exc:
        t_error, error = time.monotonic(), exc
    return {"got": got, "errors": errors, "error": _error_name(error),
            "t_error": t_error, "push_after": _push_after(ring) if error else None}


def mode_produce(args, ring: Ring) -> dict:
    """Push sequence numbers with ``--timeout`` (default: forever) until an
    exception or ``--count`` messages; then, with ``--then sleep``, wait to
    be killed."""
    sent, error, t_error = 0, None, None
    try:
        while args.count is None or sent < args.count:
            ring.push(SEQ.pack(sent), args.timeout)
            sent += 1
    except RingException as exc:
        t_error, error = time.monotonic(), exc
    t_done = time.monotonic()
    if args.then == "sleep" and error is None:
        time.sleep(DEADLINE)
    return {"sent": sent, "t_done": t_done, "error": _error_name(error), "t_error": t_error,
            "push_after": _push_after(ring) if error else None}


def mode_pong(args, ring: Ring) -> dict:
    """Answer ``--count`` requests on NAME with replies on NAME-back: the
    reply to request ``seq`` is ``seq`` again followed by b"pong"."""
    back = Ring.attach(ring.name + "-back")
    errors = []
    try:
        for expect in range(args.count):
            (seq,) = SEQ.unpack_from(ring.pop(args.timeout))
            if seq != expect:
                errors.append(f"request {expect} carried seq {seq}")
                break
            back.push(SEQ.pack(seq) + b"pong", args.timeout)
    finally:
        back.close()
    return {"count": args.count, "errors": errors}


def mode_close_when_asleep(args, ring: Ring) -> dict:
    """Wait until the other side is asleep on ``--word`` (its futex word is
    set), then close this end and report when."""
    deadline = time.monotonic() + DEADLINE
    while not ring.header()[args.word]:
        if time.monotonic() > deadline:
            return {"error": f"peer never slept on {args.word}"}
        time.sleep(0.001)
    # The word is set just before FUTEX_WAIT; give the peer time to get there.
    time.sleep(0.05)
    t_close = time.monotonic()
    ring.close()
    return {"error": None, "t_close": t_close}


def mode_hang(args, ring: Ring) -> dict:
    """Hold the ring open and do nothing, to be killed."""
    time.sleep(DEADLINE)
    return {"error": "was not killed"}


def mode_signals(args, ring: Ring) -> dict:
    """Consume NAME until b"q" while a SIGUSR1 handler, which returns
    normally, answers every signal with b"sig" on NAME-back. A wait that a
    signal interrupts must resume, so the pops should never fail; PeerDied
    is counted (the test's process is alive throughout) and the pop retried,
    up to a bound."""
    back = Ring.attach(ring.name + "-back")
    counts = {"signals": 0, "peer_died": 0}

    def on_usr1(signum, frame):
        counts["signals"] += 1
        back.try_push(b"sig")

    signal.signal(signal.SIGUSR1, on_usr1)
    back.push(b"ready", DEADLINE)
    while counts["peer_died"] < 1000:
        try:
            if ring.pop(args.timeout) == b"q":
                break
        except PeerDied:
            counts["peer_died"] += 1
            back.try_push(b"died")
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    back.close()
    return counts


MODES = {
    "consume": mode_consume,
    "produce": mode_produce,
    "pong": mode_pong,
    "close-when-asleep": mode_close_when_asleep,
    "hang": mode_hang,
    "signals": mode_signals,
}


def main(argv: list[str] | None = None) -> int:
    # As a program started from a terminal would have it: a background job of
    # a non-interactive shell (as CI may run the suite) inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(prog="ring_peer.py")
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("name")
    ap.add_argument("--create", type=int, default=0, metavar="CAPACITY")
    ap.add_argument("--unlink", action="store_true")
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--max", type=int, default=None)
    ap.add_argument("--then", choices=["exit", "sleep"], default="exit")
    ap.add_argument("--word", choices=["cons_sleep", "prod_sleep"], default="cons_sleep")
    args = ap.parse_args(argv)
    ring = _open(args, args.name)
    try:
        report = MODES[args.mode](args, ring)
    finally:
        ring.close()
        if args.unlink:
            ring.unlink()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
