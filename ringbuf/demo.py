"""`make run`: stream messages between two processes over a ring and print
the rate. (Later the main job becomes the runtime demo.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from ringbuf.ring import Ring, unique_name
from ringbuf.stream import produce

SINGLE = 1_000_000
BATCH_TOTAL = 20_000_000
BATCH = 4096


def run_stream(count: int, batch: int) -> dict:
    with Ring.create(unique_name("procmgr-demo"), capacity=16384) as ring:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "ringbuf.stream", "consume", ring.name,
             str(count), "--batch", str(batch), "--timeout", "10"],
            stdout=subprocess.PIPE, text=True)
        try:
            start = time.perf_counter()
            produce(ring, count, batch, timeout=10)
            out, _ = consumer.communicate(timeout=60)
            wall = time.perf_counter() - start
        finally:
            if consumer.poll() is None:
                consumer.kill()
            consumer.wait()
    result = json.loads(out)
    result["wall"] = wall
    return result


def main() -> int:
    print("ringbuf demo: 64-byte messages, producer -> consumer process")
    failed = False
    for label, count, batch in (("one at a time", SINGLE, 0),
                                (f"numpy batches of {BATCH}", BATCH_TOTAL, BATCH)):
        r = run_stream(count, batch)
        # The consumer times itself from attach to its last message, which
        # leaves out interpreter start-up of the child.
        rate = count / r["seconds"]
        status = "in order, none lost" if not r["errors"] else "; ".join(r["errors"])
        failed |= bool(r["errors"])
        print(f"  {label:>24}: {count:>11,} msgs  {rate / 1e6:8.2f} M msgs/s  ({status})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
