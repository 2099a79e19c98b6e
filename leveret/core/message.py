"""The one record a message costs in the broker.

A message keeps its content header as received (class, weight, body size, then the basic properties in
their AMQP 0-9-1 wire form: the broker's canonical message format, as in RabbitMQ) and its body. Property
values are decoded only when a feature asks for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leveret.amqp import fields as codec
from leveret.amqp.fields import LongInt as LongInt  # header value types (the store's codec)
from leveret.amqp.fields import RawField as RawField

if TYPE_CHECKING:
    from .queue import Consumer, Queue

_HEADER_PREFIX = 12  # class id, weight, body size


class _Paged(bytes):
    """The type of :data:`PAGED`."""


PAGED = _Paged()
"""Stands for the body of a message whose body is on disk only (a long queue over its memory budget). It is
an empty bytes object, so byte counts of resident bodies stay right; compare with ``is``."""

RECORD_COST = 256
"""What a message held in memory costs besides its body, in bytes (the record, its content header, exchange and
routing key, decoded properties, the queue's slot), as the memory alarm counts it. Measured in docs/memory.md."""


class Message:
    """A message as routed to one queue. Routing to several queues makes one shallow copy per extra queue.

    ``address`` is the exchange and routing key as two AMQP short strings (sent verbatim on delivery),
    ``header`` the content header payload, ``seq`` the position in its queue (kept on requeue),
    ``queue`` the queue it sits in, ``consumer`` who holds it unacked (None otherwise).
    """

    __slots__ = (
        "_props",
        "address",
        "bcc",
        "body",
        "consumer",
        "delivery_count",
        "exchange",
        "expires_at",
        "flags",
        "header",
        "published_at",
        "queue",
        "redelivered",
        "routing_key",
        "seq",
        "store_id",
    )

    def __init__(self, exchange: str, routing_key: str, address: bytes, header: bytes, body: bytes) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.address = address
        self.header = header
        self.flags = (header[12] << 8) | header[13]  # which properties are present (read without decoding)
        self.body = body
        self.seq = 0
        self.redelivered = False
        self.queue: Queue | None = None
        self.consumer: Consumer | None = None
        self.delivery_count = 0
        self.store_id = 0  # the id of this record in the store; 0 when it is not stored
        self.bcc: list[str] | None = None  # BCC routing keys (removed from the headers at publish)
        self.expires_at = 0.0  # wall-clock milliseconds after which it expires in its queue; 0: never
        self._props: dict[str, Any] | None = None
        self.published_at = 0.0

    def copy(self) -> Message:
        """A fresh record for another queue, sharing the header and body bytes."""
        other = Message(self.exchange, self.routing_key, self.address, self.header, self.body)
        other._props = self._props
        other.bcc = self.bcc
        other.published_at = self.published_at
        return other

    @property
    def size(self) -> int:
        """The body's size, also while the body is paged out (read from the content header)."""
        body = self.body
        return len(body) if body is not PAGED else int.from_bytes(self.header[4:12], "big")

    @property
    def properties(self) -> dict[str, Any]:
        """The basic properties that are present, decoded once."""
        props = self._props
        if props is None:
            props = self._props = codec.decode_properties(self.header[_HEADER_PREFIX:])
        return props

    @property
    def headers(self) -> dict[str, Any] | None:
        headers = self.properties.get("headers")
        return headers if isinstance(headers, dict) else None

    def set_properties(self, props: dict[str, Any]) -> None:
        """Replace the properties (the broker rewrote some: reply-to, BCC): a new content header."""
        self.header = build_header(props, self.size)
        self.flags = (self.header[12] << 8) | self.header[13]
        self._props = props

    @property
    def persistent(self) -> bool:
        """delivery_mode is 2. Read from the header bytes when the properties are not decoded yet: the mode
        follows only content-type, content-encoding and headers, which are skipped by their lengths (decoding
        every property of each stored message cost ~9% of the broker's CPU in persistent pubsub)."""
        flags = self.flags
        if not flags & 0x1000:
            return False
        props = self._props
        if props is not None:
            return props.get("delivery_mode") == 2
        return delivery_mode(self.header, flags) == 2


def delivery_mode(header: bytes, flags: int) -> int:
    """The delivery-mode octet of a content header whose flags have the delivery-mode bit (0x1000), found by
    skipping the three properties before it; -1 when the header is too short for what its flags say (the
    decoder reports such a header)."""
    pos = _HEADER_PREFIX + 2
    try:
        if flags & 0x8000:  # content-type, a short string
            pos += 1 + header[pos]
        if flags & 0x4000:  # content-encoding
            pos += 1 + header[pos]
        if flags & 0x2000:  # headers, a field table: its byte length, then the table
            pos += 4 + int.from_bytes(header[pos:pos + 4], "big")
        return header[pos]
    except IndexError:
        return -1


def new_message(exchange: str, routing_key: str, properties: dict[str, Any], body: bytes,
                address: bytes | None = None) -> Message:
    """A message the broker makes itself (dead letters, delayed and retried copies, the firehose's) from decoded
    ``properties``, which it keeps (they are not decoded again). ``address``: the exchange and routing key
    encoded, when the caller has them already."""
    msg = Message(exchange, routing_key, address or build_address(exchange, routing_key),
                  build_header(properties, len(body)), body)
    msg._props = properties
    return msg


def build_header(properties: dict[str, Any], body_size: int) -> bytes:
    """A content header payload for a message the broker makes itself (management publish, dead letters)."""
    return b"\x00\x3c\x00\x00" + body_size.to_bytes(8, "big") + codec.encode_properties(properties)


def build_address(exchange: str, routing_key: str) -> bytes:
    return codec.encode_shortstr(exchange) + codec.encode_shortstr(routing_key)
