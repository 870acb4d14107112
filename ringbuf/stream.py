"""Stream sequence-numbered messages through a ring between two processes
and check that none is lost, duplicated or reordered.

Used by the demo (``make run``), the stress tests and the benchmarks, so that
all three exercise the ring the same way. Run as a program it is the far end
of a stream:

    python -m ringbuf.stream consume NAME COUNT [--batch K]
    python -m ringbuf.stream produce NAME COUNT [--batch K]

and prints one JSON line: {"count", "seconds", "errors"}.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time

import numpy as np

from ringbuf.ring import Ring

# The first 8 bytes of every message are its sequence number.
_SEQ = struct.Struct("<Q")


def record_dtype(slot_size: int) -> np.dtype:
    """A slot seen as a sequence number followed by filler."""
    return np.dtype([("seq", "<u8"), ("fill", f"V{slot_size - 8}")])


def produce(ring: Ring, count: int, batch: int = 0, timeout: float | None = None) -> None:
    """Push messages 0..count-1, one at a time or ``batch`` per publish."""
    if batch:
        block = np.zeros(batch, dtype=record_dtype(ring.slot_size))
        sent = 0
        while sent < count:
            k = min(batch, count - sent)
            block["seq"][:k] = np.arange(sent, sent + k, dtype=np.uint64)
            done = 0
            while done < k:
                done += ring.push_many(block[done:k], timeout=timeout)
            sent += k
        return
    fill = b"\0" * (ring.slot_size - 8)
    push, pack = ring.push, _SEQ.pack
    for seq in range(count):
        push(pack(seq) + fill, timeout)


def consume(ring: Ring, count: int, batch: int = 0, timeout: float | None = None) -> list[str]:
    """Pop ``count`` messages and return what was wrong with the sequence."""
    errors: list[str] = []
    if batch:
        out = np.empty(batch, dtype=record_dtype(ring.slot_size))
        got = 0
        while got < count:
            n = ring.pop_many_into(out[: min(batch, count - got)], timeout=timeout)
            if n == 0:
                errors.append(f"timed out after {got} messages")
                break
            expect = np.arange(got, got + n, dtype=np.uint64)
            if not np.array_equal(out["seq"][:n], expect):
                bad = int(np.flatnonzero(out["seq"][:n] != expect)[0])
                errors.append(f"message {got + bad} carried seq {int(out['seq'][bad])}")
                break
            got += n
        return errors
    pop, unpack = ring.pop, _SEQ.unpack_from
    for expect in range(count):
        (seq,) = unpack(pop(timeout))
        if seq != expect:
            errors.append(f"message {expect} carried seq {seq}")
            break
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ringbuf.stream")
    ap.add_argument("role", choices=["produce", "consume"])
    ap.add_argument("name")
    ap.add_argument("count", type=int)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=None,
                    help="longest wait for one message (default: forever)")
    args = ap.parse_args(argv)
    ring = Ring.attach(args.name)
    try:
        start = time.perf_counter()
        if args.role == "produce":
            produce(ring, args.count, args.batch, args.timeout)
            errors: list[str] = []
        else:
            errors = consume(ring, args.count, args.batch, args.timeout)
        seconds = time.perf_counter() - start
    finally:
        ring.close()
    print(json.dumps({"count": args.count, "seconds": seconds, "errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
