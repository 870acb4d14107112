"""Two-process measurements of ringbuf and of what a user would use instead.

Every contender moves the same 64-byte messages from this process (the
producer) to a child started with multiprocessing's "spawn" method (the
consumer). Method, the same for every contender:

- the child attaches to the channel and says "ready" on a control pipe;
- the producer then sends one start message and ``count`` more;
- the child starts its clock when the start message arrives and stops it
  when the last of the ``count`` has been received, and reports the seconds
  on the control pipe. Rate = count / seconds: process start-up, attaching
  and the first wake-up are left out, for every contender alike.

Groups of contenders (``SINGLE``, ``BATCH``, ``ROUND_TRIP``) are measured
interleaved, round after round (ring, faster-fifo, Pipe, ring, faster-fifo,
Pipe, ...), so that machine noise hits them alike; the figures are medians
over rounds. Idle CPU is measured for all blocked consumers over one common
window. ``compare`` runs everything and returns medians, ratios and the
machine they were measured on.

Every count is a parameter, so a smoke test can run all of this at tiny
sizes. Every segment is made with ``Ring.create`` in a ``with`` block (closed
and unlinked on the way out, failure or not); every child is reaped on the
way out of ``_Child`` and killed first if the block failed.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import platform
import statistics
import time
import traceback

import numpy as np

import ringbuf
from bench.stats import median_p99_us

MSG = b"x" * 64
BATCH = 4096
SHM_PREFIX = "procmgr-bench"
CTX = mp.get_context("spawn")

# Longest wait for a child to attach, for one measurement to end, and for
# a queue to take one message (a live consumer never stalls that long).
_START_TIMEOUT = 60.0
_RUN_TIMEOUT = 300.0
_PUT_TIMEOUT = 10.0
# A consumer child gives up on a silent producer (one killed outright, say).
_GET_TIMEOUT = 30.0
# faster-fifo: "large max size" (its default is 1 MB); put/get otherwise default.
_FF_BYTES = 64 * 1024 * 1024


def _name() -> str:
    return ringbuf.unique_name(SHM_PREFIX)


# ---- the child side -----------------------------------------------------------


def _child_main(target, ctl, *args):
    """Run ``target(ctl, *args)`` in the child; a failure is reported with
    its traceback (then the child exits non-zero), so the parent can say why."""
    try:
        target(ctl, *args)
    except BaseException:
        with contextlib.suppress(Exception):
            ctl.send(("error", traceback.format_exc()))
        raise
    finally:
        ctl.close()


def _ring_consumer(ctl, name, count):
    ring = ringbuf.Ring.attach(name)
    try:
        pop = ring.pop
        ctl.send(("ready", None))
        pop()                      # the start message; a dead producer ends the wait
        start = time.perf_counter()
        for _ in range(count):
            pop()
        ctl.send(("result", time.perf_counter() - start))
    finally:
        ring.close()


def _ring_batch_consumer(ctl, name, count, batch):
    ring = ringbuf.Ring.attach(name)
    try:
        out = np.empty(batch, dtype=ringbuf.slot_dtype(ring.slot_size))
        pop_into = ring.pop_many_into
        ctl.send(("ready", None))
        ring.pop()                 # the start message
        start = time.perf_counter()
        got = 0
        while got < count:
            got += pop_into(out, timeout=None)
        ctl.send(("result", time.perf_counter() - start))
    finally:
        ring.close()


def _queue_consumer(ctl, q, count):
    """faster-fifo and multiprocessing.Queue: the same get() loop."""
    get = q.get
    ctl.send(("ready", None))
    get(timeout=_GET_TIMEOUT)
    start = time.perf_counter()
    for _ in range(count):
        get(timeout=_GET_TIMEOUT)
    ctl.send(("result", time.perf_counter() - start))


def _ff_batch_consumer(ctl, q, count, batch):
    # faster-fifo's receive buffer starts at a few kB (~57 of these messages
    # per get_many); a batch user would grow it to a batch, as done here.
    q.reallocate_msg_buffer(batch * 256)
    get_many = q.get_many
    ctl.send(("ready", None))
    q.get(timeout=_GET_TIMEOUT)
    start = time.perf_counter()
    got = 0
    while got < count:
        got += len(get_many(timeout=_GET_TIMEOUT, max_messages_to_get=batch))
    ctl.send(("result", time.perf_counter() - start))


def _pipe_consumer(ctl, conn, count):
    recv = conn.recv_bytes
    ctl.send(("ready", None))
    recv()
    start = time.perf_counter()
    for _ in range(count):
        recv()
    ctl.send(("result", time.perf_counter() - start))


def _pipe_batch_consumer(ctl, conn, count, batch):
    # The Pipe's counterpart of pop_many_into: whole blocks into one buffer.
    buf = bytearray(batch * len(MSG))
    recv_into = conn.recv_bytes_into
    ctl.send(("ready", None))
    conn.recv_bytes()
    start = time.perf_counter()
    got = 0
    while got < count:
        got += recv_into(buf) // len(MSG)
    ctl.send(("result", time.perf_counter() - start))


def _ring_echo(ctl, req_name, resp_name, count):
    req, resp = ringbuf.Ring.attach(req_name), ringbuf.Ring.attach(resp_name)
    try:
        pop, push = req.pop, resp.push
        ctl.send(("ready", None))
        for _ in range(count):
            push(pop())
    finally:
        req.close()
        resp.close()


def _pipe_echo(ctl, conn, count):
    recv, send = conn.recv_bytes, conn.send_bytes
    ctl.send(("ready", None))
    for _ in range(count):
        send(recv())


def _ring_idle(ctl, name):
    ring = ringbuf.Ring.attach(name)
    try:
        ctl.send(("ready", None))
        with contextlib.suppress(ringbuf.Closed):
            ring.pop(timeout=None)        # until the parent closes its end
    finally:
        ring.close()


def _ff_idle(ctl, q):
    ctl.send(("ready", None))
    q.get(timeout=_GET_TIMEOUT)           # until the parent puts the wake-up


def _pipe_idle(ctl, conn):
    ctl.send(("ready", None))
    with contextlib.suppress(EOFError):
        conn.recv_bytes()                 # until the parent sends or closes


# ---- the parent side ------------------------------------------------------------


class BenchChildError(RuntimeError):
    """A benchmark child failed, died, or did not answer in time."""


class _Child:
    """A spawned child with a control pipe; always reaped.

    Entering starts it and waits for its "ready". Leaving joins it; if the
    block failed (or the child does not finish in time) it is killed first,
    so a failed measurement never leaves a process behind.
    """

    def __init__(self, target, *args):
        self._ctl, child_end = CTX.Pipe()
        self._child_end = child_end
        self.proc = CTX.Process(target=_child_main, args=(target, child_end, *args),
                                daemon=True, name=f"bench-{target.__name__}")

    def __enter__(self) -> _Child:
        try:
            self.proc.start()
            # Only the child holds its end now: if it dies, recv sees EOF at once.
            self._child_end.close()
            self.recv("ready", _START_TIMEOUT)
        except BaseException:
            self._reap(kill=True)
            raise
        return self

    def recv(self, kind: str = "result", timeout: float = _RUN_TIMEOUT):
        """The child's next message, which must be of ``kind``."""
        if not self._ctl.poll(timeout):
            raise BenchChildError(f"{self.proc.name}: no {kind!r} within {timeout:.0f} s")
        try:
            tag, value = self._ctl.recv()
        except EOFError:
            self.proc.join(5)
            raise BenchChildError(
                f"{self.proc.name} exited (code {self.proc.exitcode}) before {kind!r}"
            ) from None
        if tag == "error":
            raise BenchChildError(f"{self.proc.name} failed:\n{value}")
        if tag != kind:
            raise BenchChildError(f"{self.proc.name}: expected {kind!r}, got {tag!r}")
        return value

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __exit__(self, exc_type, *exc) -> None:
        self._reap(kill=exc_type is not None)

    def _reap(self, kill: bool) -> None:
        if self.proc.pid is not None:          # started
            if not kill:
                self.proc.join(30)
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(10)
            if self.proc.exitcode is not None:  # reaped: release its resources
                self.proc.close()
        self._ctl.close()
        if not self._child_end.closed:
            self._child_end.close()


def _timed(target, args, produce, handoff=()) -> float:
    """Start the consumer child, run ``produce`` here, return the child's seconds.

    ``handoff``: connections the child received; once it is ready the parent
    closes its copies, so a consumer that dies shows as EOF/EPIPE here
    instead of a producer blocked on a pipe nobody reads."""
    with _Child(target, *args) as child:
        for conn in handoff:
            conn.close()
        produce()
        return child.recv("result")


@contextlib.contextmanager
def _mp_queue(**kw):
    """A multiprocessing.Queue whose feeder thread can never hang the exit."""
    q = CTX.Queue(**kw)
    try:
        yield q
    except BaseException:
        q.cancel_join_thread()    # the reader may be gone: do not wait to flush
        raise
    finally:
        q.close()


# ---- single-message throughput (messages/s) -----------------------------------------


def ring_rate(count: int = 1_000_000) -> float:
    """ringbuf push/pop, one message at a time."""
    with ringbuf.Ring.create(_name(), 4096) as ring:
        def produce():
            push = ring.push
            for _ in range(count + 1):
                push(MSG)
        return count / _timed(_ring_consumer, (ring.name, count), produce)


def faster_fifo_rate(count: int = 100_000) -> float:
    """faster-fifo put/get, default settings but a large max size."""
    import faster_fifo

    q = faster_fifo.Queue(max_size_bytes=_FF_BYTES)

    def produce():
        put = q.put
        for _ in range(count + 1):
            put(MSG, timeout=_PUT_TIMEOUT)
    return count / _timed(_queue_consumer, (q, count), produce)


def pipe_rate(count: int = 200_000) -> float:
    """multiprocessing.Pipe send_bytes/recv_bytes."""
    recv, send = CTX.Pipe(duplex=False)
    try:
        def produce():
            send_bytes = send.send_bytes
            for _ in range(count + 1):
                send_bytes(MSG)
        return count / _timed(_pipe_consumer, (recv, count), produce, (recv,))
    finally:
        recv.close()
        send.close()


def mp_queue_rate(count: int = 100_000) -> float:
    """multiprocessing.Queue put/get."""
    with _mp_queue() as q:
        def produce():
            put = q.put
            for _ in range(count + 1):
                put(MSG)
        return count / _timed(_queue_consumer, (q, count), produce)


# ---- batch throughput (messages/s) -----------------------------------------------------


def ring_batch_rate(count: int = 40_000_000, batch: int = BATCH,
                    capacity: int = 65536) -> float:
    """ringbuf numpy batches: push_many / pop_many_into."""
    with ringbuf.Ring.create(_name(), capacity) as ring:
        block = np.frombuffer(MSG * batch, dtype=ringbuf.slot_dtype())

        def produce():
            push_many = ring.push_many
            ring.push(MSG)
            sent = 0
            while sent < count:
                sent += push_many(block[: min(batch, count - sent)], timeout=None)
        return count / _timed(_ring_batch_consumer, (ring.name, count, batch), produce)


def faster_fifo_batch_rate(count: int = 200_000, batch: int = BATCH) -> float:
    """faster-fifo put_many/get_many of ``batch`` messages (each still pickled)."""
    import faster_fifo

    q = faster_fifo.Queue(max_size_bytes=_FF_BYTES)
    msgs = [MSG] * batch

    def produce():
        q.put(MSG, timeout=_PUT_TIMEOUT)
        sent = 0
        while sent < count:
            k = min(batch, count - sent)
            q.put_many(msgs if k == batch else msgs[:k], timeout=_PUT_TIMEOUT)
            sent += k
    return count / _timed(_ff_batch_consumer, (q, count, batch), produce)


def pipe_batch_rate(count: int = 5_000_000, batch: int = BATCH) -> float:
    """multiprocessing.Pipe moving ``batch`` messages per send_bytes/recv_bytes_into."""
    recv, send = CTX.Pipe(duplex=False)
    block = MSG * batch
    try:
        def produce():
            send.send_bytes(MSG)
            sent = 0
            while sent < count:
                k = min(batch, count - sent)
                send.send_bytes(block if k == batch else block[: k * len(MSG)])
                sent += k
        return count / _timed(_pipe_batch_consumer, (recv, count, batch), produce, (recv,))
    finally:
        recv.close()
        send.close()


# ---- the C ceiling (messages/s) ---------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _c_ceiling_exe() -> str:
    """c_ceiling.c against the ring's own _ring.c, compiled once per process
    with the C compiler the build needs anyway; removed at exit."""
    import atexit
    import shutil
    import subprocess
    import sysconfig
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve().parent
    src = here.parent / "ringbuf"
    cc = sysconfig.get_config_var("CC") or "cc"
    tmp = tempfile.mkdtemp(prefix="procmgr-bench-ceiling-")
    atexit.register(shutil.rmtree, tmp, True)
    exe = os.path.join(tmp, "ceiling")
    subprocess.run([*cc.split(), "-O2", "-std=gnu11", f"-I{src}", str(here / "c_ceiling.c"),
                    str(src / "_ring.c"), "-o", exe], check=True, capture_output=True)
    return exe


def c_ceiling(count: int = 20_000_000, mode: str | None = None) -> dict:
    """The same ring driven from C by two processes (fork, no Python): what
    the hardware allows. ``mode`` "single" sends count/4 one at a time,
    "batch" count in batches of 4096, None both. Returns {mode: msgs/s}."""
    import subprocess

    args = [_c_ceiling_exe(), str(count)] + ([mode] if mode else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True,
                         timeout=_RUN_TIMEOUT).stdout
    return {k: float(v) for k, v in (line.split() for line in out.splitlines())}


def c_single_rate(count: int = 5_000_000) -> float:
    return c_ceiling(4 * count, "single")["single"]


def c_batch_rate(count: int = 40_000_000) -> float:
    return c_ceiling(count, "batch")["batch"]


# ---- round trip (µs) --------------------------------------------------------------------


def _time_round_trips(send, recv, count: int, warmup: int) -> tuple[float, float]:
    """send(MSG) then recv() against an echoing peer, timed one by one."""
    clock = time.perf_counter_ns
    for _ in range(warmup):
        send(MSG)
        recv()
    samples = np.empty(count, dtype=np.int64)
    for i in range(count):
        t = clock()
        send(MSG)
        recv()
        samples[i] = clock() - t
    return median_p99_us(samples)


def ring_pingpong_us(count: int = 20_000, warmup: int = 2_000) -> tuple[float, float]:
    """Round trip through a ring pair (request ring, reply ring): (median, p99) µs."""
    with ringbuf.Ring.create(_name(), 64) as req, ringbuf.Ring.create(_name(), 64) as resp:
        with _Child(_ring_echo, req.name, resp.name, warmup + count):
            return _time_round_trips(req.push, resp.pop, count, warmup)


def pipe_pingpong_us(count: int = 10_000, warmup: int = 1_000) -> tuple[float, float]:
    """Round trip through a duplex multiprocessing.Pipe: (median, p99) µs."""
    here, there = CTX.Pipe()
    try:
        with _Child(_pipe_echo, there, warmup + count):
            there.close()
            return _time_round_trips(here.send_bytes, here.recv_bytes, count, warmup)
    finally:
        here.close()
        there.close()


# ---- idle CPU ------------------------------------------------------------------------------


def _cpu_ns(pid: int) -> int:
    """CPU time of a process in ns, from the scheduler's exact runtime
    (/proc/PID/task/*/schedstat), finer than cpu_times' 10 ms ticks."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def idle_cpu(seconds: float = 2.0) -> dict:
    """CPU share (0..1 of one CPU) of consumers blocked on an empty channel:
    ringbuf pop(timeout=None), faster-fifo get, Pipe recv_bytes -- all three
    blocked at once and measured over one common window.

    Returns {contender: {"psutil": share, "sched": share}}: psutil's
    cpu_times delta / wall (10 ms ticks: 0.5% steps over 2 s) and the
    scheduler's exact runtime over the same wall time.
    """
    import faster_fifo
    import psutil

    ff = faster_fifo.Queue(max_size_bytes=1 << 20)
    precv, psend = CTX.Pipe(duplex=False)
    with contextlib.ExitStack() as stack:
        stack.callback(psend.close)
        stack.callback(precv.close)
        ring = stack.enter_context(ringbuf.Ring.create(_name(), 64))
        kids = {
            "ring": stack.enter_context(_Child(_ring_idle, ring.name)),
            "faster_fifo": stack.enter_context(_Child(_ff_idle, ff)),
            "mp_pipe": stack.enter_context(_Child(_pipe_idle, precv)),
        }
        precv.close()                     # the child has its copy
        # The ring consumer is asleep once it has set its futex word
        # (after its 30 µs spin); give the others the same moment to block.
        deadline = time.monotonic() + 10
        while not ring.header()["cons_sleep"] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        procs = {k: psutil.Process(c.pid) for k, c in kids.items()}

        def snapshot():
            out = {}
            for k, p in procs.items():
                t = p.cpu_times()
                out[k] = (t.user + t.system, _cpu_ns(p.pid))
            return out

        t0, before = time.monotonic_ns(), snapshot()
        time.sleep(seconds)
        after, t1 = snapshot(), time.monotonic_ns()
        wall = t1 - t0
        # Wake them all; leaving the stack joins them.
        ring.close()
        ff.put(MSG, timeout=5)
        psend.send_bytes(MSG)
        return {k: {"psutil": (after[k][0] - before[k][0]) * 1e9 / wall,
                    "sched": (after[k][1] - before[k][1]) / wall} for k in kids}


def ring_idle_cpu(seconds: float = 2.0) -> float:
    """CPU share (0..1) of a ring consumer blocked in pop(timeout=None)."""
    return idle_cpu(seconds)["ring"]["psutil"]


# ---- groups, interleaving, the whole comparison -------------------------------------------

# Default counts at scale 1: each run long enough for steady state (~0.2-2 s
# on a 2-CPU EPYC VM); c_single is bimodal run to run (15-90 M/s: whether the
# two sides fall into lockstep on the shared lines), a reference only.
SINGLE = {
    "ring": (ring_rate, 1_000_000),
    "faster_fifo": (faster_fifo_rate, 100_000),
    "mp_pipe": (pipe_rate, 200_000),
    "mp_queue": (mp_queue_rate, 100_000),
    "c_single": (c_single_rate, 5_000_000),
}
BATCHED = {
    "ring_batch": (ring_batch_rate, 40_000_000),
    "ff_batch": (faster_fifo_batch_rate, 200_000),
    "pipe_batch": (pipe_batch_rate, 5_000_000),
    "c_batch": (c_batch_rate, 40_000_000),
}
ROUND_TRIP = {
    "ring_rtt": (ring_pingpong_us, 20_000),
    "pipe_rtt": (pipe_pingpong_us, 10_000),
}
GROUPS = {"single": SINGLE, "batch": BATCHED, "round_trip": ROUND_TRIP}
# Below this a run is too short to mean anything, even in a smoke test.
_MIN_COUNT = {"ring_rtt": 200, "pipe_rtt": 100}


def runs(group: dict, scale: float = 1.0) -> dict:
    """{name: zero-argument callable} for a group at ``scale`` x default counts."""
    out = {}
    for name, (fn, count) in group.items():
        n = max(_MIN_COUNT.get(name, 1000), int(count * scale))
        out[name] = functools.partial(fn, n)
    return out


def one_round(runs_: dict, samples: dict) -> None:
    """Each contender once, in order, appending to ``samples[name]``."""
    for name, run in runs_.items():
        samples.setdefault(name, []).append(run())


def interleaved(runs_: dict, rounds: int) -> dict:
    """``rounds`` rounds of ``one_round``: {name: [one sample per round]}."""
    samples: dict = {}
    for _ in range(rounds):
        one_round(runs_, samples)
    return samples


def summarize(samples: dict) -> dict:
    """Medians over rounds (round trips: median of the medians and of the p99s)."""
    med = {}
    for name, vals in samples.items():
        if name.endswith("_rtt"):
            med[name + "_median_us"] = statistics.median(v[0] for v in vals)
            med[name + "_p99_us"] = statistics.median(v[1] for v in vals)
        else:
            med[name] = statistics.median(vals)
    return med


def ratios(med: dict) -> dict:
    """ringbuf against each peer measured in the same run (> 1: ringbuf ahead)."""
    pairs = {
        "ring / faster_fifo": ("ring", "faster_fifo"),
        "ring / mp_pipe": ("ring", "mp_pipe"),
        "ring / mp_queue": ("ring", "mp_queue"),
        "ring / c_single": ("ring", "c_single"),
        "ring_batch / ff_batch": ("ring_batch", "ff_batch"),
        "ring_batch / pipe_batch": ("ring_batch", "pipe_batch"),
        "ring_batch / c_batch": ("ring_batch", "c_batch"),
        "ring_batch / ring": ("ring_batch", "ring"),
        "pipe rtt / ring rtt": ("pipe_rtt_median_us", "ring_rtt_median_us"),
    }
    return {k: med[a] / med[b] for k, (a, b) in pairs.items() if a in med and b in med}


def idle_medians(idle: dict) -> dict:
    """Flatten idle_cpu() into medians keys."""
    out = {}
    for name, shares in idle.items():
        out[f"{name}_idle_cpu"] = shares["psutil"]
        out[f"{name}_idle_cpu_sched"] = shares["sched"]
    return out


# The targets, each as the figure it is read from and how it compares.
TARGETS = {
    "ring / faster_fifo": (">=", 15.0),
    "ring / mp_pipe": (">=", 5.0),
    "ring_rtt_median_us": ("<=", 5.0),
    "ring_batch": (">=", 30e6),
    "ring_idle_cpu": ("<", 0.01),
    "ring_idle_cpu_sched": ("<", 0.01),
}


def check_targets(r: dict) -> dict:
    """{target: (measured, met)} for every target whose figure is in ``r``."""
    figures = {**r["medians"], **r["ratios"]}
    out = {}
    for key, (op, bound) in TARGETS.items():
        if key in figures:
            v = figures[key]
            met = v >= bound if op == ">=" else v <= bound if op == "<=" else v < bound
            out[key] = (v, met)
    return out


def machine() -> dict:
    """What the figures were measured on."""
    from importlib.metadata import PackageNotFoundError, version

    import cffi

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "absent"

    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), model)
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cffi": cffi.__version__,
        "faster_fifo": ver("faster-fifo"),
        "psutil": ver("psutil"),
        "loadavg": os.getloadavg()[0],
    }


def compare(rounds: int = 5, scale: float = 1.0, idle_seconds: float = 2.0) -> dict:
    """Every contender of every group, interleaved over ``rounds``, then idle
    CPU over one common window: medians, ratios, samples and the machine."""
    every = {}
    for group in GROUPS.values():
        every.update(runs(group, scale))
    samples = interleaved(every, rounds)
    med = summarize(samples)
    med.update(idle_medians(idle_cpu(idle_seconds)))
    r = {"medians": med, "ratios": ratios(med), "samples": samples,
         "rounds": rounds, "scale": scale, "machine": machine()}
    r["targets"] = check_targets(r)
    return r
