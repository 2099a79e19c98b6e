"""The forwarder: drains an outbox into one or more brokers with publisher confirms. See docs/outbox.md.

One task per destination, each with its own connection and confirm-mode channel. It reads the destination's
pending messages in id order, publishes up to ``window`` of them without waiting (pipelined; the broker's
confirms come back in batches), and deletes a message's pending row only once the broker confirmed it:

- ack: the row is deleted (and the message with its last destination's row);
- returned (mandatory, unroutable) or no such exchange: the row is *parked* with the reason, retried every
  ``unroutable_retry`` seconds (the queue may simply not be declared yet), and reported by the status;
- nack: the broker refused it for now (e.g. a full queue with reject-publish): the window drains, then the
  session restarts after a back-off and sends it again;
- connection or channel lost, ``connection.blocked``: unconfirmed messages stay pending; it reconnects with a
  capped exponential back-off (trying the destination's URLs in turn) and sends them again (at-least-once:
  only messages whose confirm was lost can be duplicated).

A destination's messages are published in id order on one channel; a parked or nacked message is sent again
later, after the ones behind it. Destinations do not wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import aio_pika
import aiormq
from pamqp import commands as spec

from leveret.aioconnect import open_connection, server_product
from leveret.outbox.destinations import DEFAULT_URL, Destination, describe, log_status, parse_brokers, safe_url
from leveret.outbox.frames import Publisher
from leveret.outbox.http_transport import HttpTarget
from leveret.outbox.lock import ForwarderLock
from leveret.outbox.message import NOTIFY_MARK, OutboxError, OutboxMessage
from leveret.outbox.notices import NoticeListener, notice_queue
from leveret.outbox.postgres import is_postgres_url
from leveret.outbox.sessions import LeaseRenewal, Nacked, http_session, stomp_session
from leveret.outbox.stomp_transport import StompRefused, StompTarget
from leveret.outbox.storage import OutboxStorage, is_storage, open_outbox

log = logging.getLogger("leveret.outbox.forwarder")

class Forwarder:
    """Forward the outbox ``outbox`` (an :class:`Outbox` or a path) to ``brokers`` (``["[NAME=]URL", ...]`` or
    ``{name: url or [urls]}``). ``await run()`` until :meth:`request_stop`; or ``start()``/``stop()`` in a
    background thread. Only one forwarder runs per outbox file (a second one waits for the first's lock)."""

    def __init__(self, outbox: OutboxStorage | str | os.PathLike[str],
                 brokers: Sequence[str] | Mapping[str, str | Sequence[str]] = (DEFAULT_URL,), *,
                 window: int = 1024, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 report_interval: float = 30.0, unroutable_retry: float = 30.0, poll_interval: float = 0.05,
                 stop_timeout: float = 10.0, connect_timeout: float = 10.0, shrink_interval: float = 1.0,
                 lease: float | None = None, notify_queue: str | None = None) -> None:
        self._outbox_arg = outbox
        if is_storage(outbox):
            storage = cast(OutboxStorage, outbox)
            self.where, self.shared = storage.where, storage.shared
            path = getattr(storage, "path", None)
        elif is_postgres_url(outbox):
            self.where, self.shared, path = safe_url(str(outbox)), True, None
        else:
            path = Path(cast(Any, outbox))
            self.where, self.shared = str(path), False
        self.path: Path | None = path  # the SQLite file (its lock file is beside it), or None
        self.destinations = [Destination(n, u) for n, u in parse_brokers(brokers).items()]
        self.window = max(1, window)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.report_interval = report_interval
        self.unroutable_retry = unroutable_retry
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.connect_timeout = connect_timeout
        self.shrink_interval = shrink_interval
        self.lease = lease  # a PostgreSQL outbox opened from its URL: PostgresOutbox(lease=...)
        self.notify_queue = notify_queue or notice_queue(self.where, path)  # tracked messages' notices, on Leveret
        self._next_shrink = 0.0
        self.outbox: OutboxStorage | None = cast(OutboxStorage, outbox) if is_storage(outbox) else None
        self.stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self.stop_deadline = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = ForwarderLock(path)
        self._warned_unknown: set[str] = set()

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Forward until :meth:`request_stop`; then finish the in-flight confirms (``stop_timeout`` at most)."""
        self._loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        if self._stop_requested:
            self.stop_event.set()
        own = self.outbox is None
        try:
            if not await self._lock.acquire(self.sleep):
                return
            if self.outbox is None:
                # Its own writes are deletions of confirmed messages: one lost in a power cut is only sent
                # again, so they need no fsync (the senders' connections keep theirs).
                options: dict[str, Any] = {"synchronous": "NORMAL"}
                if self.shared and self.lease is not None:
                    options["lease"] = self.lease
                self.outbox = await asyncio.to_thread(open_outbox, cast(Any, self._outbox_arg), **options)
            names = ", ".join(f"{d.name} -> {' | '.join(safe_url(u) for u in d.urls)}" for d in self.destinations)
            log.info("forwarding the outbox %s to %s", self.where, names)
            self._ready.set()
            reporter = asyncio.ensure_future(self._reporter())
            try:
                await asyncio.gather(*(self._forward(d) for d in self.destinations))
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            await self._report()
            log.info("forwarder stopped")
        finally:
            if own and self.outbox is not None:
                await asyncio.to_thread(self.outbox.close)
                self.outbox = None
            self._lock.release()
            self._ready.set()

    def request_stop(self) -> None:
        """Stop fetching, finish the confirms in flight, then return from :meth:`run` (thread-safe)."""
        self._stop_requested = True
        if self._loop is not None and self.stop_event is not None:
            self._loop.call_soon_threadsafe(self._set_stop)

    def _set_stop(self) -> None:
        assert self.stop_event is not None
        if not self.stop_event.is_set():
            self.stop_deadline = time.monotonic() + self.stop_timeout
            self.stop_event.set()

    def start(self, timeout: float = 10.0) -> Forwarder:
        """Run in a background thread (tests, embedding); returns once it forwards."""

        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as exc:  # pragma: no cover - reported to start()
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=main, name="leveret-forwarder", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the forwarder did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def holds_lock(self) -> bool:
        """Whether this forwarder holds its outbox file's lock (see outbox/lock.py)."""
        return self._lock.fd is not None

    async def sleep(self, seconds: float) -> bool:
        """Sleep, or less if a stop is requested; return whether it was."""
        assert self.stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        return self.stop_event.is_set()

    # --- one destination -------------------------------------------------------------------------------------

    async def _forward(self, dest: Destination) -> None:
        assert self.stop_event is not None
        failures = 0
        turn = 0  # stays on the URL that works; the next one after a failure (failover)
        refused = 0  # URLs that could not be reached in this round: the next is tried at once, then a back-off
        while not self.stop_event.is_set():
            url = dest.urls[turn % len(dest.urls)]
            started = time.monotonic()
            forwarded = dest.forwarded
            try:
                conn = await self._connect(url)
            except Exception as exc:
                self._down(dest, url, exc)
                refused += 1
                if refused < len(dest.urls) and not self.stop_event.is_set():
                    turn += 1
                    continue
            else:
                if conn is None:  # stopped while connecting
                    break
                dest.url = url
                if dest.down_since is not None or dest.error is not None:
                    log.info("%s: connected to %s", dest.name, safe_url(url))
                dest.error = dest.down_since = dest.retry_at = None
                try:
                    await self._session(dest, conn)
                except (Nacked, StompRefused, aiormq.exceptions.ChannelClosed) as exc:
                    self._down(dest, url, exc)
                    turn -= 1  # the broker refused a message, it is not down: back to it after the back-off
                except Exception as exc:
                    self._down(dest, url, exc)
                finally:
                    dest.url = None
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            if self.stop_event.is_set():
                break
            if dest.forwarded > forwarded or time.monotonic() - started > self.backoff_max:
                failures = 0
            delay = min(self.backoff_max, self.backoff_initial * 2 ** min(failures, 30))
            delay *= random.uniform(0.75, 1.0)
            failures += 1
            turn += 1
            dest.retry_at = time.time() + delay
            refused = 0
            await self.sleep(delay)

    async def _connect(self, url: str) -> Any:
        """Connect, or give up at once (None) when a stop is requested meanwhile."""
        assert self.stop_event is not None
        connecting = asyncio.ensure_future(self._open(url))
        stopping = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait([connecting, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if connecting.done():
            return connecting.result()
        connecting.cancel()
        connecting.add_done_callback(_consume)
        return None

    async def _open(self, url: str) -> Any:
        if url.startswith(("http://", "https://")):
            return await HttpTarget(url, self.connect_timeout).open()
        if url.startswith("stomp://"):
            return await StompTarget(url, self.connect_timeout).open()
        return await open_connection(url, self.connect_timeout)

    def _down(self, dest: Destination, url: str, exc: BaseException) -> None:
        text = describe(exc)
        if isinstance(exc, (OutboxError, sqlite3.Error)):
            log.error("%s: local outbox error on %s: %s (retrying with back-off)", dest.name, self.where, text)
            return
        if dest.error != text:
            log.warning("%s: %s: %s (retrying with back-off)", dest.name, safe_url(url), text)
        dest.error = text
        if dest.down_since is None:
            dest.down_since = time.time()

    async def _session(self, dest: Destination, conn: Any) -> None:
        assert self.stop_event is not None and self.outbox is not None
        if isinstance(conn, (HttpTarget, StompTarget)):
            try:
                await (http_session(self, dest, conn) if isinstance(conn, HttpTarget) else
                       stomp_session(self, dest, conn))
            finally:
                if self.outbox.shared:  # what this session leased and did not settle: another forwarder may take it
                    with contextlib.suppress(Exception):
                        await self.outbox.release_async(dest.name)
            return
        outbox = self.outbox
        channel = await conn.channel(publisher_confirms=True, on_return_raises=False)
        publisher = Publisher(await channel.get_underlay_channel())
        # the notice queue is consumed if it exists, and declared at the first tracked message (below)
        listener = await NoticeListener.start(conn, outbox, dest.name, self.notify_queue, publisher, create=False)
        notices_tried = listener is not None or server_product(conn) != "Leveret"
        exchanges: dict[str, aio_pika.abc.AbstractExchange | None] = {"": channel.default_exchange}
        checker: list[aio_pika.abc.AbstractChannel] = []
        inflight: deque[tuple[OutboxMessage, asyncio.Future[Any]]] = deque()
        proven = dest.proven = set()  # exchanges that confirmed a message in this session
        cursor = 0
        next_revive = 0.0
        reviving = False
        leases = LeaseRenewal(outbox)
        try:
            while True:
                window = 1 if cursor < dest.careful_until else self.window
                stopping = self.stop_event.is_set()
                held = not await self.settle(dest)
                if stopping and ((not inflight and not held) or time.monotonic() > self.stop_deadline):
                    if dest.confirmed:
                        log.error("%s: %d confirmed message(s) could not be deleted from the outbox (%s): they "
                                  "will be sent again", dest.name, len(dest.confirmed), dest.local_error)
                    return
                fetched = 0
                if (not stopping and not reviving and not held and len(inflight) < window
                        and time.monotonic() >= dest.local_retry_at):
                    try:
                        rows = await asyncio.to_thread(outbox.fetch, dest.name, cursor, window - len(inflight))
                    except (OutboxError, sqlite3.Error) as exc:
                        self.local_error(dest, exc)
                        rows = []
                    parks: list[tuple[int, str]] = []
                    batch: list[OutboxMessage] = []
                    for row in rows:
                        probe = row.exchange not in proven
                        if probe and (batch or inflight):
                            break  # the first publish to an exchange goes alone (below)
                        cursor = row.id
                        exchange = await self._exchange(conn, channel, checker, exchanges, row.exchange)
                        if exchange is None:
                            parks.append((row.id, f"NOT_FOUND - no exchange '{row.exchange}'"))
                            continue
                        batch.append(row)
                        if probe:
                            # The first message to an exchange in a session is sent alone and confirmed before
                            # anything else: if the broker refuses it with a channel error (403 on an internal
                            # exchange), it is known to be the culprit and no other message's confirm is lost.
                            dest.alone = row.id
                            break
                    fetched = len(batch) + len(parks)
                    if not notices_tried and any(NOTIFY_MARK in row.header for row in batch):
                        notices_tried = True  # the first tracked message: declare the notice queue (once)
                        listener = await NoticeListener.start(conn, outbox, dest.name, self.notify_queue, publisher)
                    if batch:  # one socket write for the whole batch; confirms come back pipelined
                        inflight.extend(zip(batch, await publisher.publish(batch), strict=True))
                    if parks:
                        await self.settle(dest, parks=parks)
                if inflight:
                    if fetched == 0 or len(inflight) >= window:
                        await asyncio.wait([inflight[0][1]], timeout=self.poll_interval)
                elif fetched == 0:
                    if outbox.shared and not dest.confirmed:
                        # Nothing in flight: scan from the start again, for rows that another forwarder held
                        # (leased) when the cursor passed them and that its death or stop has freed since.
                        cursor = 0
                    if stopping:
                        await asyncio.sleep(self.poll_interval)
                    else:
                        await self.shrink_when_idle(dest)
                        await self.sleep(self.poll_interval)
                await self._reap(dest, inflight)
                await leases.renew(self, dest, [row.id for row, _ in inflight])
                now = time.monotonic()
                if now < dest.local_retry_at:
                    continue
                try:
                    if self.unroutable_retry > 0 and now >= next_revive and not stopping:
                        next_revive = now + min(self.unroutable_retry, 5.0)
                        if await asyncio.to_thread(outbox.parked_due, dest.name, time.time()):
                            reviving = True
                    if reviving and not inflight and not dest.confirmed and not dest.to_park:
                        await outbox.revive_async(dest.name, time.time())
                        reviving = False
                        cursor = 0
                except (OutboxError, sqlite3.Error) as exc:
                    self.local_error(dest, exc)
        finally:
            for _, future in inflight:
                future.cancel()
                future.add_done_callback(_consume)
            if listener is not None:
                await listener.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)
            if outbox.shared:  # what this session leased and did not settle: another forwarder may take it
                with contextlib.suppress(Exception):
                    await outbox.release_async(dest.name)

    async def _exchange(self, conn: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel,
                        checker: list[aio_pika.abc.AbstractChannel],
                        exchanges: dict[str, aio_pika.abc.AbstractExchange | None],
                        name: str) -> aio_pika.abc.AbstractExchange | None:
        """The exchange to publish to, or None when the broker has none of that name. Checked once per
        session with a passive declare on a channel of its own (a 404 closes that channel, not the
        publishing one)."""
        if name in exchanges:
            return exchanges[name]
        if not checker or checker[0].is_closed:
            checker[:] = [await conn.channel(publisher_confirms=False)]
        try:
            await checker[0].get_exchange(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None  # not cached: it may be declared by the time the parked message is retried
        exchanges[name] = await channel.get_exchange(name, ensure=False)
        return exchanges[name]

    async def _reap(self, dest: Destination, inflight: deque[tuple[OutboxMessage, asyncio.Future[Any]]]) -> None:
        """Settle the confirmed head of the window; raise for a nack (after draining) or a lost channel."""
        assert self.outbox is not None
        done: list[int] = []
        parks: list[tuple[int, str]] = []
        failure: BaseException | None = None
        failed: OutboxMessage | None = None
        while inflight and inflight[0][1].done():
            row, future = inflight.popleft()
            exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
            if exc is None:
                dest.proven.add(row.exchange)
                if isinstance(future.result(), spec.Basic.Ack):
                    done.append(row.id)
                else:  # the returned message: mandatory and unroutable
                    parks.append((row.id, "NO_ROUTE - returned by the broker: no queue is bound for it"))
                continue
            failure, failed = exc, row
            break
        await self.settle(dest, done, parks)
        if failure is None or failed is None:
            return
        if isinstance(failure, aio_pika.exceptions.DeliveryError):
            await self.note_failure(dest, failed.id, "nacked by the broker")
            await self._drain(dest, inflight)
            raise Nacked(f"message {failed.id} nacked by the broker; sending it again after a back-off")
        if isinstance(failure, aiormq.exceptions.ChannelClosed) and (
                type(failure) is not aiormq.exceptions.ChannelClosed or isinstance(failure.args[0], int)):
            # The broker closed the channel with a reply code (403, 404, 406...) because of one of the messages
            # in flight, but which? Send them again one at a time: then the culprit is the only one in flight.
            text = describe(failure)
            if not inflight and (failed.id <= dest.careful_until or failed.id == dest.alone):
                log.warning("%s: message %d closed the channel (%s): parking it", dest.name, failed.id, text)
                await self.settle(dest, parks=[(failed.id, text)])
            else:
                dest.careful_until = max(failed.id, *(row.id for row, _ in inflight))
                await self.note_failure(dest, failed.id, text)
        raise failure

    async def _drain(self, dest: Destination, inflight: deque[tuple[OutboxMessage, asyncio.Future[Any]]]) -> None:
        """Wait for the rest of the window after a nack and settle what was confirmed."""
        assert self.outbox is not None
        if inflight:
            await asyncio.wait([f for _, f in inflight], timeout=self.stop_timeout)
        done, parks = [], []
        while inflight and inflight[0][1].done() and not inflight[0][1].cancelled():
            row, future = inflight.popleft()
            if future.exception() is None:
                if isinstance(future.result(), spec.Basic.Ack):
                    done.append(row.id)
                else:
                    parks.append((row.id, "NO_ROUTE - returned by the broker: no queue is bound for it"))
        await self.settle(dest, done, parks)

    async def settle(self, dest: Destination, done: Sequence[int] = (),
                      parks: Sequence[tuple[int, str]] = ()) -> bool:
        """Write what the broker settled (confirmed ids, parked messages) to the outbox, with what an earlier
        failed write left in memory; return whether nothing is left. A failed write is a local error: kept in
        memory and retried after a back-off, never a reason to reconnect (which would send them again)."""
        assert self.outbox is not None
        dest.confirmed.extend(done)
        dest.to_park.extend(parks)
        if not dest.confirmed and not dest.to_park:
            return True
        if time.monotonic() < dest.local_retry_at:
            return False
        try:
            if dest.confirmed:
                ids = list(dest.confirmed)
                await self.outbox.mark_done_async(dest.name, ids)
                del dest.confirmed[:len(ids)]
                dest.forwarded += len(ids)
            if dest.to_park:
                failures = list(dest.to_park)
                await self._park(dest, failures)
                del dest.to_park[:len(failures)]
        except (OutboxError, sqlite3.Error) as exc:
            self.local_error(dest, exc)
            return False
        if dest.local_error is not None:
            log.info("%s: the outbox %s is writable again", dest.name, self.where)
        dest.local_error = None
        dest.local_failures = 0
        return not dest.confirmed and not dest.to_park

    async def shrink_when_idle(self, dest: Destination) -> None:
        """Nothing to send: give the file's free pages back to the file system, ``SHRINK_PAGES`` at a time (one
        short writer transaction each, so a send waits at most for one step), checking every
        ``shrink_interval`` seconds. A failure is only logged: it is housekeeping."""
        assert self.outbox is not None
        now = time.monotonic()
        if now < self._next_shrink or self.shrink_interval <= 0 or dest.confirmed or dest.to_park:
            return
        self._next_shrink = now + self.shrink_interval
        try:
            if await asyncio.to_thread(self.outbox.free_pages):
                left = await self.outbox.shrink_async()
                if left:
                    self._next_shrink = now  # more to give back: the next idle turn continues
        except (OutboxError, sqlite3.Error) as exc:
            log.warning("%s: could not shrink the outbox %s: %s", dest.name, self.where, describe(exc))

    def local_error(self, dest: Destination, exc: BaseException) -> None:
        delay = min(self.backoff_max, self.backoff_initial * 2 ** min(dest.local_failures, 30))
        dest.local_failures += 1
        dest.local_retry_at = time.monotonic() + delay
        text = describe(exc)
        if dest.local_error != text:
            log.error("%s: local outbox error on %s: %s (%d confirmed message(s) kept in memory; sending paused, "
                      "retrying with back-off)", dest.name, self.where, text, len(dest.confirmed))
        dest.local_error = text

    async def note_failure(self, dest: Destination, message_id: int, error: str) -> None:
        """Record why a message failed (bookkeeping only: a failed write is logged and otherwise ignored)."""
        assert self.outbox is not None
        try:
            await self.outbox.note_failure_async(dest.name, message_id, error)
        except (OutboxError, sqlite3.Error) as exc:
            log.error("%s: local outbox error on %s: %s", dest.name, self.where, describe(exc))

    async def _park(self, dest: Destination, failures: list[tuple[int, str]]) -> None:
        assert self.outbox is not None
        retry_at = time.time() + self.unroutable_retry if self.unroutable_retry > 0 else float("inf")
        await self.outbox.park_async(dest.name, failures, retry_at)
        dest.parked += len(failures)
        log.warning("%s: %d message(s) parked (%s); retried in %.0f s", dest.name, len(failures), failures[0][1],
                    self.unroutable_retry)

    # --- reporting -------------------------------------------------------------------------------------------

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.report_interval)
            try:
                await self._report()
            except (OutboxError, sqlite3.Error) as exc:
                log.error("cannot read the status of the outbox %s: %s", self.where, describe(exc))

    async def _report(self) -> None:
        if self.outbox is None:
            return
        status = await asyncio.to_thread(self.outbox.status)
        log_status(self.destinations, status)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per destination: the broker it is connected to (or the error), and how many it forwarded/parked."""
        return {d.name: {"url": safe_url(d.url) if d.url else None, "error": d.error, "forwarded": d.forwarded,
                         "parked": d.parked} for d in self.destinations}


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
