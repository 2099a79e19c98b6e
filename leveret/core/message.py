"""The one record a message costs in the broker.

A message keeps its content header as received (class, weight, body size, then the basic properties in
their AMQP 0-9-1 wire form: the broker's canonical message format, as in RabbitMQ) and its body. Property
values are decoded only when a feature asks for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from leveret.amqp import fields as codec
from leveret.amqp.fields import LongInt as LongInt  # header value types (the store's codec)
from leveret.amqp.fields import RawField as RawField

if TYPE_CHECKING:
    from .queue import Consumer, Queue

_HEADER_PREFIX = 12  # class id, weight, body size


@mypyc_attr(native_class=False)  # a builtin's subclass: mypyc compiles it as a plain Python class
class _Paged(bytes):
    """The type of :data:`PAGED`."""


PAGED = _Paged()
"""Stands for the body of a message whose body is on disk only (a long queue over its memory budget). It is
an empty bytes object, so byte counts of resident bodies stay right; compare with ``is``."""

NOTIFY = 0x10000
"""A bit of :attr:`Message.flags` past the 16 property flags: the message's headers have ``x-leveret-notify`` (a
job-done notice queue, core/notices.py) and it has a ``message_id``. Set once when the record is made (a search
of the content header, ~150 ns, for messages with headers and a message_id only), so the routing, delivery, ack
and drop hooks test one bit, as they do for ``message_id``."""
_NOTIFY_KEY = b"\x10x-leveret-notify"  # the header's name as an AMQP short string (a field table key)
_ID_AND_HEADERS = 0x2080  # the headers and message_id property flags

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

    def __init__(self, exchange: str, routing_key: str, address: bytes, header: bytes, body: bytes,
                 flags: int = -1) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.address = address
        self.header = header
        if flags < 0:  # not a copy: which properties are present (read without decoding), and NOTIFY
            flags = (header[12] << 8) | header[13]
            # literals, not the module's names (no global lookups): _ID_AND_HEADERS, _NOTIFY_KEY, NOTIFY
            if flags & 0x2080 == 0x2080 and header.find(b"\x10x-leveret-notify", 14) >= 0:
                flags |= 0x10000  # a message_id, and a header that names a notice queue
        self.flags = flags
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
        other = Message(self.exchange, self.routing_key, self.address, self.header, self.body, self.flags)
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
        self.header = header = build_header(props, self.size)
        flags = (header[12] << 8) | header[13]
        if flags & _ID_AND_HEADERS == _ID_AND_HEADERS and header.find(_NOTIFY_KEY, 14) >= 0:
            flags |= NOTIFY
        self.flags = flags
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
