"""Two-process measurements of ringbuf and of what a user would use instead.

Every contender moves the same 64-byte messages from a parent process to a
child started with multiprocessing's "spawn" method. The child times itself
from the first message to the last, so start-up is left out; it reports back
over a Pipe. ``compare`` interleaves the contenders over several rounds so
that machine noise hits them alike, and returns medians and ratios.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import statistics
import time

import numpy as np

import ringbuf

MSG = b"x" * 64
CTX = mp.get_context("spawn")


# ---- consumers (run in the child) -------------------------------------------


def _ring_consumer(name, count, report, ready):
    ring = ringbuf.Ring.attach(name)
    ready.set()
    pop = ring.pop
    pop()              # no timeout needed: a dead producer ends the wait
    start = time.perf_counter()
    for _ in range(count - 1):
        pop()
    report.send(time.perf_counter() - start)
    ring.close()


def _ring_batch_consumer(name, count, batch, report, ready):
    ring = ringbuf.Ring.attach(name)
    out = np.empty(batch, dtype=ringbuf.slot_dtype(ring.slot_size))
    ready.set()
    got = ring.pop_many_into(out, timeout=10)
    start = time.perf_counter()
    while got < count:
        got += ring.pop_many_into(out, timeout=10)
    report.send(time.perf_counter() - start)
    ring.close()


def _queue_consumer(q, count, report, ready):
    ready.set()
    q.get(timeout=10)
    start = time.perf_counter()
    for _ in range(count - 1):
        q.get(timeout=10)
    report.send(time.perf_counter() - start)


def _pipe_consumer(conn, count, report, ready):
    ready.set()
    conn.recv_bytes()
    start = time.perf_counter()
    for _ in range(count - 1):
        conn.recv_bytes()
    report.send(time.perf_counter() - start)


def _ring_echo(req_name, resp_name, count, ready):
    req, resp = ringbuf.Ring.attach(req_name), ringbuf.Ring.attach(resp_name)
    ready.set()
    for _ in range(count):
        resp.push(req.pop())
    req.close()
    resp.close()


def _pipe_echo(conn, count, ready):
    ready.set()
    for _ in range(count):
        conn.send_bytes(conn.recv_bytes())


def _ring_idle(name, ready):
    ring = ringbuf.Ring.attach(name)
    ready.set()
    try:
        ring.pop(timeout=None)        # until the parent closes its end
    except ringbuf.Closed:
        pass
    ring.close()


# ---- the parent side ----------------------------------------------------------


class _Child:
    """A spawned child that is always joined, or killed and joined."""

    def __init__(self, target, *args):
        self.ready = CTX.Event()
        self.proc = CTX.Process(target=target, args=(*args, self.ready), daemon=True)

    def __enter__(self):
        self.proc.start()
        if not self.ready.wait(30):
            raise RuntimeError("benchmark child did not start")
        return self

    def __exit__(self, *exc):
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def _timed(target, args, produce):
    recv, send = CTX.Pipe(duplex=False)
    with _Child(target, *args, send):
        produce()
        if not recv.poll(60):
            raise RuntimeError("benchmark consumer did not report")
        return recv.recv()


def ring_rate(count: int = 300_000) -> float:
    """Single-message API: messages per second."""
    with ringbuf.Ring.create(ringbuf.unique_name("procmgr-bench"), 4096) as ring:
        def produce():
            push = ring.push
            for _ in range(count):
                push(MSG)
        return count / _timed(_ring_consumer, (ring.name, count), produce)


def ring_batch_rate(count: int = 20_000_000, batch: int = 4096) -> float:
    """numpy batch API: messages per second."""
    with ringbuf.Ring.create(ringbuf.unique_name("procmgr-bench"), 65536) as ring:
        block = np.frombuffer(MSG * batch, dtype=ringbuf.slot_dtype())

        def produce():
            sent = 0
            while sent < count:
                sent += ring.push_many(block[: min(batch, count - sent)], timeout=10)
        return count / _timed(_ring_batch_consumer, (ring.name, count, batch), produce)


def faster_fifo_rate(count: int = 100_000) -> float:
    import faster_fifo

    q = faster_fifo.Queue(max_size_bytes=64 * 1024 * 1024)

    def produce():
        for _ in range(count):
            q.put(MSG, timeout=10)
    return count / _timed(_queue_consumer, (q, count), produce)


def mp_queue_rate(count: int = 100_000) -> float:
    q = CTX.Queue()

    def produce():
        for _ in range(count):
            q.put(MSG)
    return count / _timed(_queue_consumer, (q, count), produce)


def pipe_rate(count: int = 200_000) -> float:
    recv, send = CTX.Pipe(duplex=False)

    def produce():
        for _ in range(count):
            send.send_bytes(MSG)
    return count / _timed(_pipe_consumer, (recv, count), produce)


def ring_pingpong_us(count: int = 20_000) -> tuple[float, float]:
    """Round trip through a ring pair: (median, p99) in µs."""
    with ringbuf.Ring.create(ringbuf.unique_name("procmgr-bench"), 64) as req, \
            ringbuf.Ring.create(ringbuf.unique_name("procmgr-bench"), 64) as resp:
        with _Child(_ring_echo, req.name, resp.name, count):
            return _round_trips(count, lambda: (req.push(MSG), resp.pop()))


def pipe_pingpong_us(count: int = 20_000) -> tuple[float, float]:
    here, there = CTX.Pipe()
    with _Child(_pipe_echo, there, count):
        return _round_trips(count, lambda: (here.send_bytes(MSG), here.recv_bytes()))


def _round_trips(count, one):
    samples = np.empty(count)
    clock = time.perf_counter_ns
    for i in range(count):
        t = clock()
        one()
        samples[i] = clock() - t
    return float(np.median(samples)) / 1e3, float(np.percentile(samples, 99)) / 1e3


def _cpu_ns(pid: int) -> int:
    """CPU time of a process in ns (schedstat: finer than the 10 ms ticks of
    cpu_times, which would round a sleeping process to zero)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def ring_idle_cpu(seconds: float = 2.0) -> float:
    """CPU share (0..1) of a consumer blocked on an empty ring."""
    with ringbuf.Ring.create(ringbuf.unique_name("procmgr-bench"), 64) as ring:
        with _Child(_ring_idle, ring.name) as child:
            pid = child.proc.pid
            # Wait (bounded) until it sleeps on the futex: its sleep word is set.
            deadline = time.monotonic() + 10
            while not ring.header()["cons_sleep"] and time.monotonic() < deadline:
                time.sleep(0.01)
            before, t0 = _cpu_ns(pid), time.monotonic_ns()
            time.sleep(seconds)
            used, wall = _cpu_ns(pid) - before, time.monotonic_ns() - t0
            ring.close()                    # wakes the child: Closed
        return used / wall


def c_ceiling(count: int = 20_000_000) -> dict:
    """The same ring driven from C by two processes: what the hardware allows
    (compiled on the spot with the C compiler the build needs anyway)."""
    import subprocess
    import sysconfig
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve().parent
    ring = here.parent / "ringbuf"
    cc = sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "ceiling"
        subprocess.run([*cc.split(), "-O2", "-std=gnu11", f"-I{ring}", str(here / "c_ceiling.c"),
                        str(ring / "_ring.c"), "-o", str(exe)], check=True, capture_output=True)
        out = subprocess.run([str(exe), str(count)], check=True, capture_output=True,
                             text=True, timeout=300).stdout
    return {k: float(v) for k, v in (line.split() for line in out.splitlines())}


def machine() -> dict:
    import cffi
    from importlib.metadata import version

    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), platform.processor())
    return {
        "cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
        "python": platform.python_version(), "numpy": np.__version__,
        "cffi": cffi.__version__, "faster_fifo": version("faster-fifo"),
    }


def compare(rounds: int = 5, scale: float = 1.0) -> dict:
    """All contenders, interleaved over ``rounds``; medians and ratios."""
    n = lambda k: max(1000, int(k * scale))  # noqa: E731
    runs = {
        "ring": lambda: ring_rate(n(300_000)),
        "faster_fifo": lambda: faster_fifo_rate(n(100_000)),
        "mp_pipe": lambda: pipe_rate(n(200_000)),
        "mp_queue": lambda: mp_queue_rate(n(100_000)),
        "ring_batch": lambda: ring_batch_rate(n(20_000_000)),
        "ring_rtt": lambda: ring_pingpong_us(n(20_000)),
        "pipe_rtt": lambda: pipe_pingpong_us(n(20_000)),
        "c_ceiling": lambda: c_ceiling(n(20_000_000)),
    }
    samples = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(run())
    med = {k: statistics.median(v) for k, v in samples.items()
           if not k.endswith("_rtt") and k != "c_ceiling"}
    med["c_single"] = statistics.median(c["single"] for c in samples["c_ceiling"])
    med["c_batch"] = statistics.median(c["batch"] for c in samples["c_ceiling"])
    for k in ("ring_rtt", "pipe_rtt"):
        med[k + "_median_us"] = statistics.median(s[0] for s in samples[k])
        med[k + "_p99_us"] = statistics.median(s[1] for s in samples[k])
    med["ring_idle_cpu"] = ring_idle_cpu()
    ratios = {
        "ring / faster_fifo": med["ring"] / med["faster_fifo"],
        "ring / mp_pipe": med["ring"] / med["mp_pipe"],
        "ring / mp_queue": med["ring"] / med["mp_queue"],
        "pipe rtt / ring rtt": med["pipe_rtt_median_us"] / med["ring_rtt_median_us"],
    }
    return {"medians": med, "ratios": ratios, "rounds": rounds, "machine": machine()}
