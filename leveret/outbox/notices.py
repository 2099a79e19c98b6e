"""The forwarder's side of Leveret's job-done notices (the broker's side: leveret/core/notices.py).

A message sent with ``track=True`` is saved with an empty ``x-leveret-notify`` header. On a destination whose
broker is Leveret, the forwarder declares a durable notice queue of its own (:func:`notice_queue`: one per outbox,
the same name across restarts, so notices about messages in flight when it stopped wait for the next one), fills
that name into the header of every tracked message it forwards there, and consumes the queue on a channel beside
its publishing one (:class:`NoticeListener`). The broker publishes each step of the message's life to it (routed,
delivered, processed, failed: JSON); the listener records them in the outbox (``record_notices_async``, the
``notices`` table) and acks them once recorded, in batches, so ``tracked()`` and ``leveret outbox status PATH ID``
show ``delivered``, ``processed`` or ``failed`` (tracking.py). Elsewhere (RabbitMQ, the HTTP transport) the header
is left out and the states stop at ``sent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from typing import Any

import aio_pika.abc
import aio_pika.exceptions

from leveret.aioconnect import server_product
from leveret.outbox.frames import Publisher
from leveret.outbox.storage import OutboxStorage
from leveret.outbox.tracking import Notice, parse_notice

log = logging.getLogger("leveret.outbox.forwarder")

NOTICE_PREFIX = "leveret.outbox.notices."
PREFETCH = 1024


def notice_queue(where: str, path: os.PathLike[str] | str | None = None) -> str:
    """The notice queue of an outbox: from the host and the file's real path (SQLite), or the database it is
    in (PostgreSQL: ``where``, its URL without the password), so every forwarder of that outbox uses the same."""
    ident = f"{socket.gethostname()}:{os.path.realpath(path)}" if path is not None else where
    return NOTICE_PREFIX + hashlib.sha256(ident.encode()).hexdigest()[:24]


class NoticeListener:
    """Consumes one destination's notice queue and records its notices in the outbox (acked once recorded)."""

    def __init__(self, outbox: OutboxStorage, destination: str, queue: str) -> None:
        self.outbox = outbox
        self.destination = destination
        self.queue = queue
        self.recorded = 0
        self._pending: list[tuple[Notice | None, aio_pika.abc.AbstractIncomingMessage]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    @classmethod
    async def start(cls, conn: Any, outbox: OutboxStorage, destination: str, queue: str,
                    publisher: Publisher, create: bool = True) -> NoticeListener | None:
        """Declare and consume ``queue`` when the broker is Leveret, and have ``publisher`` name it in tracked
        messages (None otherwise: no notices, the header is left out). With ``create=False`` only a queue that
        exists is consumed (a passive declare): the forwarder declares it at the first tracked message it sends,
        and consumes it at each session's start if an earlier one did, for the notices that wait there."""
        publisher.notify = None
        if server_product(conn) != "Leveret":
            return None
        listener = cls(outbox, destination, queue)
        try:
            channel = listener._channel = await conn.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            declared = await channel.declare_queue(queue, durable=True, passive=not create)
            await declared.consume(listener._on_message)
        except aio_pika.exceptions.ChannelNotFoundEntity:  # passive: not declared yet, no tracked message so far
            await listener.close()
            return None
        except (TimeoutError, aio_pika.exceptions.AMQPError) as exc:  # forwarding goes on without notices
            log.warning("%s: no job-done notices (cannot consume the notice queue %s: %s)", destination, queue, exc)
            await listener.close()
            return None
        publisher.notify = queue
        return listener

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self._pending.append((parse_notice(message.body, self.destination), message))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        """Record what arrived (one outbox transaction per batch), then ack it with one multiple ack."""
        while self._pending:
            batch, self._pending = self._pending, []
            notices = [notice for notice, _ in batch if notice is not None]
            try:
                if notices:
                    await self.outbox.record_notices_async(notices)
            except Exception as exc:  # given back: delivered again
                log.warning("%s: could not record %d notice(s) in the outbox: %s", self.destination, len(notices),
                            exc)
                with contextlib.suppress(Exception):
                    await batch[-1][1].nack(multiple=True, requeue=True)
                return
            self.recorded += len(notices)
            with contextlib.suppress(Exception):
                await batch[-1][1].ack(multiple=True)

    async def close(self) -> None:
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flushing), 5)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._channel.close(), 5)
