"""A batch of outbox rows as AMQP frames, published with one socket write (the forwarder's AMQP transport):
:class:`Outgoing` (a row's body and properties as sent: the outbox's due header turned into ``x-delay``, the notice
queue named in a tracked message, ``x-deduplication-header`` added to a row saved without it),
:func:`message_id_of` and :class:`Publisher`."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Sequence
from typing import Any, cast

import aiormq
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands as spec

from leveret.outbox.message import DEDUP_HEADER, DUE_HEADER, NOTIFY_HEADER, OutboxMessage


class Outgoing:
    """What aio-pika's Exchange.publish reads of a message: its body and pamqp properties."""

    __slots__ = ("body", "properties")

    def __init__(self, row: OutboxMessage, now: float | None = None, notify: str | None = None) -> None:
        self.body = row.body
        self.properties = row.properties
        headers = self.properties.headers
        if headers and DUE_HEADER in headers:  # a delay relative to now, not to when it was saved
            headers = dict(headers)
            due = headers.pop(DUE_HEADER)  # the outbox's own header: not forwarded
            if isinstance(due, int | float):
                now_ms = round((time.time() if now is None else now) * 1000)
                headers["x-delay"] = max(0, round(due) - now_ms)
            self.properties.headers = headers
        if (not headers or DEDUP_HEADER not in headers) and self.properties.message_id:
            headers = {DEDUP_HEADER: self.properties.message_id, **(headers or {})}  # saved by an older Leveret
            self.properties.headers = headers
        if headers and NOTIFY_HEADER in headers:  # a tracked message: the forwarder's notice queue, if any
            headers = dict(headers)
            if notify:
                headers[NOTIFY_HEADER] = notify
            else:
                del headers[NOTIFY_HEADER]
            self.properties.headers = headers


_FRAME_END = b"\xce"
_DUE = DUE_HEADER.encode()
_NOTIFY = b"\x10" + NOTIFY_HEADER.encode()  # the header's name as a field table key
_DEDUP = b"\x16" + DEDUP_HEADER.encode()
# The basic properties before message_id, in wire order: (flag, kind): shortstr, table (long length) or octet.
_BEFORE_MESSAGE_ID = ((0x8000, "s"), (0x4000, "s"), (0x2000, "t"), (0x1000, "o"), (0x0800, "o"), (0x0400, "s"),
                      (0x0200, "s"), (0x0100, "s"))


def message_id_of(header: bytes) -> str:
    """The message_id of properties in their wire form (flags, then values), read without decoding the rest:
    aiormq matches a returned message to its publish by it. "" when there is none."""
    (flags,) = struct.unpack_from(">H", header)
    if not flags & 0x0080:
        return ""
    pos = 2
    for flag, kind in _BEFORE_MESSAGE_ID:
        if flags & flag:
            if kind == "s":
                pos += 1 + header[pos]
            elif kind == "t":
                pos += 4 + struct.unpack_from(">I", header, pos)[0]
            else:
                pos += 1
    return header[pos + 1:pos + 1 + header[pos]].decode("utf-8", "surrogateescape")
_BASIC_CLASS = 60


class Publisher:
    """Publishes a batch of outbox messages with one write: the frames of every message are joined and handed
    to aiormq's writer as one :class:`ChannelFrame`, so the socket sees one ``write`` per batch, not one (plus a
    task, a lock round and a drain) per message as ``Exchange.publish`` does.

    It takes aiormq's channel lock and registers each message's confirmation future and message id in the
    channel exactly as ``aiormq.Channel.basic_publish`` does, so aiormq's reader settles them as usual: an
    ack resolves the future with ``Basic.Ack`` (``multiple`` acks included), a nack raises ``DeliveryError``,
    a returned message resolves it with the message, a closed channel or connection fails them all.

    The content header frame is built from the properties exactly as the outbox stored them (pamqp's wire
    form, saved by ``send``): no decode and re-encode per message (``tests/unit/test_outbox_frames.py`` checks
    the bytes against pamqp's own marshalling).
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.number = channel.number
        self.max_body = channel.max_content_size  # type: ignore[attr-defined]
        self._methods: dict[tuple[str, str, bool], bytes] = {}
        self.notify: str | None = None  # the notice queue of tracked messages (outbox/notices.py), on Leveret

    def frames(self, row: OutboxMessage, now: float | None = None) -> tuple[bytes, str]:
        """The wire frames of ``row`` (Basic.Publish, content header, body) and its message_id."""
        key = (row.exchange, row.routing_key, row.mandatory)
        method = self._methods.get(key)
        if method is None:
            method = pamqp.frame.marshal(spec.Basic.Publish(exchange=row.exchange, routing_key=row.routing_key,
                                                            mandatory=row.mandatory), self.number)
            if len(self._methods) < 10_000:
                self._methods[key] = method
        header = row.header
        if _DUE in header or _NOTIFY in header or _DEDUP not in header:  # (rare) re-encoded: x-delay computed
            # now (delayed tasks), the notice queue named (tracked), the deduplication id added (older rows)
            properties = Outgoing(row, now, self.notify).properties
            header = properties.marshal()
            message_id = str(properties.message_id)
        else:
            message_id = message_id_of(header)
        body = row.body
        payload = struct.pack(">HHQ", _BASIC_CLASS, 0, len(body)) + header
        parts = [method, struct.pack(">BHI", 2, self.number, len(payload)), payload, _FRAME_END]
        step = self.max_body
        for start in range(0, len(body), step):
            chunk = body[start:start + step]
            parts += (struct.pack(">BHI", 3, self.number, len(chunk)), chunk, _FRAME_END)
        return b"".join(parts), message_id

    async def publish(self, rows: Sequence[OutboxMessage]) -> list[asyncio.Future[Any]]:
        """Publish ``rows`` in order with one write; their confirmation futures, in the same order."""
        channel = cast(Any, self.channel)
        futures: list[asyncio.Future[Any]] = []
        async with channel.lock:
            if channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
            parts = []
            tags = channel.message_id_delivery_tag
            for row in rows:
                frames, message_id = self.frames(row)
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                future = channel.create_future()
                channel.confirmations[tag] = future
                tags[message_id] = tag
                future.add_done_callback(forget_tag(tags, message_id, tag))
                futures.append(future)
                parts.append(frames)
            await channel.write_queue.put(ChannelFrame(payload=b"".join(parts), should_close=False))
        return futures


def forget_tag(tags: dict[str, int], message_id: str, tag: int) -> Any:
    def forget(_: asyncio.Future[Any]) -> None:
        if tags.get(message_id) == tag:
            del tags[message_id]
    return forget
