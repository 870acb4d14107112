"""The client for asyncio: every request a coroutine, answers taken in by
the event loop itself -- no thread, no polling.

How it sleeps: the sync client sleeps on its answers ring (a futex in the
ring). An event loop cannot; it watches descriptors. So this client arms
its answers ring for a doorbell (ringbuf/_ring.h, "Sleeping") and the
manager, finding it armed when it answers, writes a few bytes to the
client's connection socket (procmgr/manager/server.py, the waker): the
loop's reader wakes, drains the socket, takes every answer in and arms
again. The socket also says when the manager is gone (end of file), and
the manager closing the rings rings it too.

Requests are sent by the sync client underneath (the same checks, the
same wire), and answered through its futures: each answer's callback
settles the asyncio future its caller awaits. A caller that gives up
(timeout, cancelled task) leaves the request in flight; its answer comes
and is dropped, and the client stays consistent.

The underlying ``Client`` belongs to the loop's thread: wait on it from
no other thread (its answers would be taken in there, not by the loop).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import AsyncIterator

from procmgr.client import logs
from procmgr.client.events import Event, EventCursor
from procmgr.client.client import (
    EVENTS_SLACK, FOLLOW_POLL, Client, CompletedRun, Domain, DomainInfo, Future, _check_log_request,
    _log_core, _RunPlan,
)
from procmgr.client.runtime import START_TIMEOUT, connect
from procmgr.errors import Err, ProcMgmtError, RuntimeGone
from procmgr.protocol import State
from ringbuf import PeerDied, RingException

_LOGGER = logging.getLogger("procmgr")



async def aconnect(name: str, timeout: float = START_TIMEOUT) -> AsyncClient:
    """An asyncio client of the runtime called ``name``: ``connect``,
    awaited (the handshake runs in a thread, so a busy manager never
    holds up the loop), bound to the running loop."""
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(None, functools.partial(connect, name, timeout=timeout))
    try:
        client = await asyncio.shield(pending)
    except asyncio.CancelledError:
        pending.add_done_callback(_close_when_connected)   # nothing left open
        raise
    return AsyncClient(client, loop)


def _close_when_connected(pending: asyncio.Future) -> None:
    if not pending.cancelled() and pending.exception() is None:
        pending.result().close()


def _expire(waiter: asyncio.Future, seq: int, timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer to request {seq} within {timeout} s"))


class AsyncClient:
    """``Client``'s calls as coroutines: ``await pm.spawn(argv)``, ``await
    pm.wait(d)``, ``await pm.run(argv)``, ``async for piece in
    pm.follow(d)``. Options, results and errors are the sync client's;
    ``timeout=`` raises TimeoutError as there (``asyncio.timeout`` around
    a call works too). Differs from asyncio.subprocess: a domain is not a
    Process object -- it is the runtime's, reached by its Domain (a cap),
    which any client may use."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop | None = None):
        self.client = client
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._sock = client._connection
        if self._sock is None:
            raise ValueError("an async client needs a client connected to a runtime "
                             "(its socket is what wakes the loop)")
        self._sock.setblocking(False)
        self._fd = self._sock.fileno()
        self._closed = False
        self._loop.add_reader(self._fd, self._readable)

    # ---- taking answers in ----

    def _readable(self) -> None:
        """The manager rang (or closed the connection): drain the socket,
        then take every answer in."""
        eof = False
        try:
            # One read: the manager rings with 8 bytes, and a wake still
            # unread calls this again (the loop's readers are level-triggered).
            eof = not self._sock.recv(4096)
        except BlockingIOError:
            pass
        except OSError:             # ECONNRESET: the manager is gone all the same
            eof = True
        self._take_in()
        if eof and not self._closed:
            self._loop.remove_reader(self._fd)
            if self.client._gone_because is None:
                self.client._manager_gone(PeerDied("the manager closed its connection"))

    def _take_in(self) -> None:
        """Every answer there is, then the ring armed for the manager to
        ring -- again if answers came in between (arm says so)."""
        client = self.client
        while True:
            try:
                client.poll()
            except RuntimeGone:
                return                  # every future in flight was answered with it
            except ProcMgmtError as e:  # a garbled answer: the good ones were taken
                _LOGGER.error("async client: %s", e)
                continue
            except RingException as e:  # its ring broken: no answer can come now
                client._manager_gone(e)
                return
            if not client._waiting:
                return                  # nothing to wait for: the next send arms
            try:
                if not client.responses.arm():
                    return              # asleep: the manager rings when it answers
            except RingException:       # closed or broken under us: the poll says so
                continue

    async def _answer(self, fut: Future, timeout: float | None):
        """The result of ``fut``, awaited."""
        # Armed for the manager to ring unless its answer -- or another --
        # is there already: then take them in now. (After the send: a send
        # that had to wait for room slept on the ring, which disarms it.)
        try:
            armed = not self.client.responses.arm()
        except RingException:
            armed = False               # closed or broken: taking in says how
        if not armed:
            self._take_in()
        if fut.done():
            return fut.result()
        waiter = self._loop.create_future()
        fut.add_done_callback(functools.partial(self._settle, waiter))
        if timeout is None:
            return await waiter
        # A timer of our own rather than asyncio.wait_for, which costs a
        # second future and a running-loop lookup per request.
        timer = self._loop.call_later(timeout, _expire, waiter, fut.seq, timeout)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _settle(self, waiter: asyncio.Future, fut: Future) -> None:
        """``fut`` was answered: its result to the awaiting caller, unless
        that caller gave up."""
        if threading.get_ident() != self._thread:   # the sync client, waited on elsewhere
            self._loop.call_soon_threadsafe(self._settle, waiter, fut)
            return
        if waiter.done():
            return
        if fut._exception is not None:
            waiter.set_exception(fut._exception)
        else:
            waiter.set_result(fut._result)

    # ---- requests ----

    async def spawn(self, argv, *, core: int = 0, env=None, executable=None, path=None,
                    cwd=None, env_extra=None, stop_signal=None, stop_timeout=None,
                    timeout=None, **streams) -> Domain:
        """As ``Client.spawn``."""
        return await self._answer(self.client.spawn_async(
            argv, core=core, env=env, executable=executable, path=path, cwd=cwd,
            env_extra=env_extra, stop_signal=stop_signal, stop_timeout=stop_timeout,
            **streams), timeout)

    async def spawn_with_caps(self, argv, caps, *, core: int = 0, env=None, executable=None,
                              path=None, cwd=None, env_extra=None, stop_signal=None,
                              stop_timeout=None, timeout=None, **streams) -> Domain:
        return await self._answer(self.client.spawn_async(
            argv, core=core, env=env, executable=executable, path=path, caps=caps, cwd=cwd,
            env_extra=env_extra, stop_signal=stop_signal, stop_timeout=stop_timeout,
            **streams), timeout)

    async def span(self, domain: Domain, core: int, timeout=None) -> int:
        return await self._answer(self.client.span_async(domain, core), timeout)

    async def kill(self, domain: Domain, timeout=None, *, signal=None,
                   grace: float | None = None) -> None:
        """As ``Client.kill``."""
        return await self._answer(self.client.kill_async(domain, signal=signal, grace=grace),
                                  timeout)

    async def signal(self, domain: Domain, sig, timeout=None) -> None:
        """As ``Client.signal``."""
        return await self._answer(self.client.signal_async(domain, sig), timeout)

    async def exit(self, domain: Domain, status: int, timeout=None) -> None:
        return await self._answer(self.client.exit_async(domain, status), timeout)

    async def wait(self, domain: Domain, nohang: bool = False, timeout=None) -> int | None:
        """As ``Client.wait``: the exit status (9 = killed)."""
        return await self._answer(self.client.wait_async(domain, nohang), timeout)

    async def status(self, domain: Domain | int, timeout=None) -> DomainInfo:
        return await self._answer(self.client.status_async(domain), timeout)

    async def domains(self, timeout=None) -> list[int]:
        ids: list[int] = []
        start = 0
        while start is not None:
            page, more = await self._answer(self.client.domains_page_async(start), timeout)
            ids += page
            start = page[-1] + 1 if more and page else None
        return ids

    async def stats(self, timeout=None) -> dict:
        return await self._answer(self.client.stats_async(), timeout)

    @property
    def in_flight(self) -> int:
        return self.client.in_flight

    # ---- output ----

    async def _log_location(self, domain, streams, core: int | None) -> tuple[int, int]:
        ident = _check_log_request(self.client.logs_dir, domain, streams)
        try:
            info = await self.status(ident)
        except ProcMgmtError as e:
            info = e
        return _log_core(ident, info, domain, core)

    async def events(self, *, after: int | None = None, kinds=None,
                     timeout: float | None = None) -> AsyncIterator[Event]:
        """As ``Client.events``: ``async for event in pm.events()``; the
        loop takes the answers in, and nothing polls meanwhile."""
        cursor = EventCursor(after, timeout, kinds)
        while True:
            wait = cursor.wait_ms() / 1000
            batch = await self._answer(self.client.events_async(cursor.after, wait),
                                       wait + EVENTS_SLACK)
            for event in cursor.take(batch):
                yield event

    async def output(self, domain: Domain | int, stream: str = "stdout", *,
                     tail: int | None = None, core: int | None = None) -> bytes:
        """As ``Client.output`` (the file is read at once: it is local)."""
        ident, core = await self._log_location(domain, (stream,), core)
        return logs.read_log(self.client.logs_dir, ident, core, stream, tail)

    async def follow(self, domain: Domain | int, stream: str = "stdout", *,
                     tail: int | None = None, core: int | None = None) -> AsyncIterator[bytes]:
        """As ``Client.follow``: ``async for piece in pm.follow(d)``."""
        async for _, data in self.follow_streams(domain, (stream,), tail=tail, core=core):
            yield data

    async def follow_streams(self, domain: Domain | int, streams=("stdout", "stderr"), *,
                             tail: int | None = None, core: int | None = None
                             ) -> AsyncIterator[tuple[str, bytes]]:
        ident, core = await self._log_location(domain, streams, core)
        if isinstance(domain, Domain):
            # Its end is the wait's answer, taken in by the loop; a pause
            # ends early when it comes.
            fut = self.client.wait_async(domain)
            end = asyncio.ensure_future(self._answer(fut, None))
            ended = fut.done

            async def pause() -> None:
                await asyncio.wait([end], timeout=FOLLOW_POLL)
        else:
            last = [State.RUNNING]

            def ended() -> bool:
                return last[0] in (State.STOPPED, State.CLEANED)

            async def pause() -> None:
                await asyncio.sleep(FOLLOW_POLL)
                last[0] = (await self.status(ident)).state
            end = None
        try:
            for piece in logs.follow_logs(self.client.logs_dir, ident, core, streams, ended,
                                          tail):
                if piece is None:
                    await pause()
                else:
                    yield piece
        finally:
            if end is not None and not end.done():
                end.cancel()        # its answer comes and is dropped

    async def run(self, argv, *, core: int = 0, env=None, executable=None, path=None,
                  cwd=None, env_extra=None, timeout: float | None = None, check: bool = False,
                  capture_output: bool = True, input: bytes | str | None = None,
                  text: bool = False, encoding: str | None = None, errors: str | None = None,
                  stdin=None, stdout=None, stderr=None, log_max_bytes: int | None = None,
                  log_backups: int | None = None) -> CompletedRun:
        """As ``Client.run``; a cancelled task kills the domain too."""
        plan = _RunPlan(self.client, capture_output, input, text, encoding, errors, stdin,
                        stdout, stderr)
        try:
            d = await self.spawn(argv, core=core, env=env, executable=executable, path=path,
                                 cwd=cwd, env_extra=env_extra, log_max_bytes=log_max_bytes,
                                 log_backups=log_backups, **plan.streams)
        finally:
            plan.input_taken()
        try:
            status = await self.wait(d, timeout=timeout)
        except TimeoutError:
            await self._end(d)
            raise plan.timed_out(argv, timeout, d) from None
        except BaseException:
            await self._end(d)
            raise
        return plan.completed(d, argv, status, check)

    async def _end(self, domain: Domain) -> None:
        """Kill a domain run() gives up on; one that ended meanwhile is fine."""
        try:
            await self.kill(domain)
        except ProcMgmtError as e:
            if e.code != Err.DOMAIN_NOT_RUNNING:
                raise

    # ---- the end ----

    def close(self) -> None:
        """Leave the runtime. A request still in flight is answered with
        RuntimeGone (its caller is not left awaiting forever)."""
        if not self._closed:
            self._closed = True
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
        self.client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
