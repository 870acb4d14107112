"""A spawnd that simulates its dispatchers: it records them without starting
processes and answers every request at once, in order, one reply each.

Used to test the manager in one process (each test scripts what the worker
does: fail a spawn, let a dispatcher exit, hold replies back, lose or repeat
one) and to measure the control plane without the cost of fork/exec. Any
figure measured with it says "simulated dispatchers".

Not a twin of ``Runtime(simulate=True)``: that is the real worker, a
process of its own with its loop, rings and hot path, told only to skip
fork/exec; this is a script in the test's own process that a test can make
misbehave. What they share -- the protocol and the reply each request
gets -- is procmgr.protocol's.
"""

from __future__ import annotations

import errno
from collections import deque

from procmgr.errors import Err
from procmgr.protocol import Decoder, Flag, Msg, Op, ProtocolError, send, take
from ringbuf import Closed, Ring


class SimulatedSpawnd:
    def __init__(self, core: int, requests: Ring, replies: Ring):
        self.core = core
        self.requests = requests    # we consume (the manager produces)
        self.replies = replies      # we produce
        self._decoder = Decoder()
        self.dispatchers: dict[int, tuple[int, int]] = {}   # dom -> (nonce, pid)
        self.cleaned: set[int] = set()
        self.signalled: list[tuple[int, int]] = []     # (dom, signal) of each SD_SIGNAL
        self.log: list[Msg] = []     # every request, in arrival order
        self.held: deque[Msg] = deque()
        self.hold = False            # keep replies back until release()
        self.fail_next: dict[int, tuple[int, int]] = {}    # op -> (err, status)
        # Like our real worker: a kill or exit releases the domain here at
        # once (Flag.RELEASED). Off by default: a spawnd that holds it until
        # SD_CLEANUP, as Barrelfish's does, which the regression tests script.
        self.releases = False
        self._next_pid = 10_000 + 1000 * core

    def step(self) -> int:
        """Answer every request now in the ring; the number answered."""
        n = 0
        for msg in take(self.requests, self._decoder):
            if isinstance(msg, ProtocolError):
                raise AssertionError(f"manager sent a bad message: {msg}")
            self.log.append(msg)
            reply = self._serve(msg)
            if self.hold:
                self.held.append(reply)
            else:
                self.send(reply)
            n += 1
        return n

    def serve(self, stop) -> None:
        """Serve until ``stop`` (a threading.Event) is set, sleeping on the ring."""
        while not stop.is_set():
            if self.step() == 0:
                try:
                    self.requests.wait_data(0.05)
                except Closed:
                    return

    def _serve(self, msg: Msg) -> Msg:
        if msg.op in self.fail_next:
            err, status = self.fail_next.pop(msg.op)
            return msg.reply(err, status)
        if msg.op in (Op.SD_SPAWN, Op.SD_SPAN):
            if msg.dom in self.dispatchers:
                return msg.reply(Err.ALREADY_SPANNED)
            self._next_pid += 1
            self.dispatchers[msg.dom] = (msg.nonce, self._next_pid)
            return msg.reply(Err.OK, self._next_pid)
        if msg.op == Op.SD_KILL:
            if self.dispatchers.pop(msg.dom, None) is None:
                return msg.reply(Err.NOT_FOUND)
            return msg.reply(Err.OK, flags=self._released(msg.dom))
        if msg.op == Op.SD_CLEANUP:
            self.cleaned.add(msg.dom)
            return msg.reply(Err.OK)
        if msg.op == Op.SD_SIGNAL:      # recorded, as a real one would deliver it
            if msg.dom not in self.dispatchers:
                return msg.reply(Err.NOT_FOUND)
            self.signalled.append((msg.dom, int.from_bytes(msg.payload, "little")))
            return msg.reply(Err.OK)
        return msg.reply(Err.UNKNOWN_OP)

    def send(self, msg: Msg) -> None:
        if not send(self.replies, msg):
            raise AssertionError("simulated spawnd: reply ring full")

    def release(self, count: int | None = None) -> None:
        """Send ``count`` held replies (all by default), in order."""
        while self.held and (count is None or count > 0):
            self.send(self.held.popleft())
            count = None if count is None else count - 1

    def exit(self, dom_id: int, status: int, signal: bool = False) -> None:
        """A dispatcher ends by itself: report it as the real worker would."""
        nonce, _ = self.dispatchers.pop(dom_id)
        self.send(Msg(Op.SD_EXIT, core=self.core, dom=dom_id, nonce=nonce, status=status,
                      flags=(Flag.SIGNALED if signal else 0) | self._released(dom_id)))

    def _released(self, dom_id: int) -> int:
        """The flag a stop report carries; a releasing spawnd lets go now."""
        if not self.releases:
            return 0
        self.cleaned.add(dom_id)
        return Flag.RELEASED

    def fail(self, op: Op, err: Err = Err.EXEC_FAILED, status: int = errno.ENOENT) -> None:
        """Make the next request of ``op`` fail with ``err``."""
        self.fail_next[op] = (err, status)
