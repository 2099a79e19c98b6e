"""The App's connection to the broker: a private event loop in a daemon thread, one connection, reconnection.

- ``Link.run_sync`` / ``run_async`` run a coroutine on the private loop, from any thread or any other loop.
- ``Link.session(timeout)`` is the live ``Session`` (connection, confirm channel, events channel, RPC channel,
  what the broker supports, the queues declared on it). When the connection is lost (broker restart, kill -9,
  network), one task reconnects with capped exponential back-off and jitter, re-declares the topology of the
  old session and restarts the status consumer; callers wait for it up to their timeout, then get
  ``BrokerUnavailable`` (a ``ConnectionError`` naming the URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika
import aiormq

from leveret.aioconnect import open_connection
from leveret.tasks.status import StatusBook, StatusStream
from leveret.tasks.topology import REPLY_TO, STATUS_EXCHANGE, server_product

T = TypeVar("T")
log = logging.getLogger("leveret.tasks")

BACKOFF_FIRST = 0.1  # seconds before the first reconnection attempt
BACKOFF_MAX = 5.0  # the cap of the exponential back-off


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's where it is installed (a dependency of leveret on Linux and macOS): less CPU per send."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class BrokerUnavailable(ConnectionError):
    """The broker could not be reached (or the connection was lost) within the timeout; names the URL."""


@dataclass
class Session:
    """One connection and what was set up on it."""

    conn: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel  # publisher confirms: task messages
    raw: aiormq.abc.AbstractChannel  # its aiormq channel (publishing through it skips aio-pika's wrappers)
    events: aiormq.abc.AbstractChannel  # no confirms: events, status markers, control messages
    product: str
    status_book: bool
    declared: set[str] = field(default_factory=set)
    waits: set[tuple[str, int]] = field(default_factory=set)  # (queue, ms) of the wait queues declared
    rpc: aiormq.abc.AbstractChannel | None = None  # direct reply-to consumer (RPC replies, status answers)
    book: StatusBook | None = None

    @property
    def alive(self) -> bool:
        return not self.conn.is_closed and not self.channel.is_closed


class Link:
    def __init__(self, url: str, name: str, *, on_connect: Callable[[Session, Session | None], Awaitable[None]],
                 on_reply: Callable[[aiormq.abc.DeliveredMessage], None]) -> None:
        self.url = url
        self.name = name
        self.on_connect = on_connect  # re-declares topology (new session, old session or None)
        self.on_reply = on_reply
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.current: Session | None = None
        self.last: Session | None = None
        self.stream: StatusStream | None = None
        self.last_error: BaseException | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._connecting: asyncio.Task[Session] | None = None
        self._rpc_lock: asyncio.Lock | None = None

    # --- the private loop --------------------------------------------------------------------------------------

    def ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        if loop is not None:
            return loop
        with self._lock:
            if self.loop is None:
                loop = new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self.thread = threading.Thread(target=run, name=f"leveret-tasks-{self.name}", daemon=True)
                self.thread.start()
                ready.wait(5)
                self.loop = loop
            return self.loop

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        loop = self.ensure_loop()
        if loop.is_running() and threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("cannot call a synchronous App method from the App's own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.ensure_loop()
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def close(self) -> None:
        self.closed = True
        loop = self.loop
        if loop is None:
            return

        async def shut() -> None:
            if self._connecting is not None:
                self._connecting.cancel()
            session, self.current = self.current, None
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.conn.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self.thread is not None:
            self.thread.join(5)
        loop.close()
        self.loop = None

    # --- the connection (on the private loop) --------------------------------------------------------------

    async def session(self, timeout: float) -> Session:
        """The live session; waits up to ``timeout`` seconds for a (re)connection."""
        session = self.current
        if session is not None and session.alive:
            return session
        if self.closed:
            raise BrokerUnavailable(f"the App for {self.url} is closed")
        if session is not None and not session.conn.is_closed:  # a channel error: start over on a new connection
            self.current = None
            with contextlib.suppress(Exception):
                await session.conn.close()
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect_loop())
        try:
            return await asyncio.wait_for(asyncio.shield(self._connecting), timeout)
        except TimeoutError:
            reason = f": {self.last_error}" if self.last_error else ""
            raise BrokerUnavailable(f"cannot reach the broker at {self.url} within {timeout:g} s{reason}") from None

    async def _connect_loop(self) -> Session:
        attempt = 0
        while True:
            try:
                session = await self._connect()
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
                self.last_error = exc
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("cannot connect to %s (%s); retrying in %.2f s", self.url, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.last_error = None
            if attempt:
                log.info("reconnected to %s", self.url)
            return session

    async def _connect(self) -> Session:
        conn = await open_connection(self.url, timeout=5)
        try:
            channel = await conn.channel(publisher_confirms=True)
            events = await (await conn.channel(publisher_confirms=False)).get_underlay_channel()
            product = server_product(conn)
            probe = await conn.channel()
            try:
                await probe.get_exchange(STATUS_EXCHANGE, ensure=True)  # passive: 404 -> no status book
                book = True
            except aiormq.exceptions.ChannelNotFoundEntity:
                book = False
            finally:
                with contextlib.suppress(Exception):
                    await probe.close()
            session = Session(conn, channel, await channel.get_underlay_channel(), events, product, book)
            await self.on_connect(session, self.last)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        self.current = self.last = session
        conn.close_callbacks.add(lambda *_: self._lost(session))
        return session

    def _lost(self, session: Session) -> None:
        """The connection closed: fail what waits on it and reconnect at once (unless the App is closing)."""
        if session.book is not None:
            session.book.close(BrokerUnavailable(f"lost the connection to {self.url}"))
        if self.current is session:
            self.current = None
        if not self.closed and (self._connecting is None or self._connecting.done()):
            self._connecting = asyncio.ensure_future(self._connect_loop())
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())

    def stream_fallback(self) -> bool:
        """Whether a send may need the "queued" event of the status stream: the last session was in stream mode,
        or there was none yet."""
        last = self.last
        return last is None or self.stream_mode(last)

    def stream_mode(self, session: Session) -> bool:
        """Status through the ``leveret.status`` stream (no status book, not a Leveret: RabbitMQ)."""
        return not session.status_book and session.product != "Leveret"

    async def status_stream(self, session: Session, ttl: float, ids: list[str] | None = None) -> StatusStream:
        """The App's one consumer of the status stream, started at the first read from where the events of
        ``ids`` begin (their creation time, see ``StatusStream.since_for``), rewound when a later read asks
        for an older id."""
        if self._rpc_lock is None:
            self._rpc_lock = asyncio.Lock()
        async with self._rpc_lock:
            if self.stream is None:
                stream = StatusStream(ttl)
                await stream.start(session.conn, stream.since_for(ids or []))
                self.stream = stream
            elif ids and (since := self.stream.since_for(ids)) < self.stream.since:
                await self.stream.rewind(session.conn, since)
        return self.stream

    async def rpc(self, session: Session) -> aiormq.abc.AbstractChannel:
        """The session's RPC channel, consuming direct reply-to (RPC replies and status answers)."""
        if session.rpc is not None and not session.rpc.is_closed:
            return session.rpc
        if self._rpc_lock is None:
            self._rpc_lock = asyncio.Lock()
        async with self._rpc_lock:
            if session.rpc is None or session.rpc.is_closed:
                channel = await (await session.conn.channel(publisher_confirms=False)).get_underlay_channel()
                await channel.basic_consume(REPLY_TO, self._deliver, no_ack=True)
                session.book = StatusBook(channel) if session.status_book else None
                session.rpc = channel
            return session.rpc

    async def _deliver(self, message: aiormq.abc.DeliveredMessage) -> None:
        self.on_reply(message)
