"""What an outbox message is, whichever storage keeps it (SQLite: store.py, PostgreSQL: postgres.py): the
checks and the wire encoding of ``send``'s arguments (:func:`prepare_message`), the row both storages insert,
:class:`OutboxMessage` as the forwarder reads it, the pending/parked states and the per-destination status."""

from __future__ import annotations

import datetime
import struct
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pamqp import commands as spec

PERSISTENT = 2
TO_SEND = 0
PARKED = 1
DEFAULT_DESTINATION = "default"
PROPERTY_NAMES = frozenset(("content_type", "content_encoding", "headers", "delivery_mode", "priority",
                             "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "message_type",
                             "user_id", "app_id"))

# A delayed message's due time (ms since the epoch): the forwarder publishes it with x-delay = due - now, so
# the time it waited in the outbox does not delay it further (the task layer's delay=/eta=).
DUE_HEADER = "x-leveret-due"

# The id a deduplicating queue or exchange (x-message-deduplication, Leveret and LavinMQ) recognises a message
# by: the outbox message's message_id, so a resend after a forwarder crash is dropped there (docs/outbox.md).
DEDUP_HEADER = "x-deduplication-header"

# A tracked message (send(track=True)) is saved with this header empty; the forwarder fills in the name of its
# notice queue on Leveret (outbox/notices.py), or leaves the header out elsewhere.
NOTIFY_HEADER = "x-leveret-notify"
NOTIFY_MARK = b"\x10" + NOTIFY_HEADER.encode()  # the header's name as a field table key: found in a saved header


class OutboxError(Exception):
    """The outbox cannot be opened, or a write to it failed: the message was NOT saved."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message as the forwarder reads it for one destination."""

    id: int
    exchange: str
    routing_key: str
    mandatory: bool
    header: bytes
    body: bytes

    @property
    def properties(self) -> spec.Basic.Properties:
        return decode_properties(self.header)


class Row:
    __slots__ = ("body", "created", "destinations", "exchange", "header", "mandatory", "routing_key", "track")

    def __init__(self, exchange: str, routing_key: str, mandatory: bool, header: bytes, body: bytes,
                 destinations: tuple[str, ...], track: str | None = None) -> None:
        self.track = track  # the message_id, when send(track=True)
        self.created = time.time()
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.header = header
        self.body = body
        self.destinations = destinations


def encode_properties(properties: Mapping[str, Any] | None, track: bool = False) -> tuple[bytes, str]:
    """Check and encode AMQP basic properties (content_type, content_encoding, headers, delivery_mode, priority,
    correlation_id, reply_to, expiration, message_id, timestamp, type (or message_type), user_id, app_id) the
    way the forwarder's client (aio-pika, pamqp) will send them, so that a message it could not publish is
    refused here. Adds a message_id when there is none, delivery_mode 2 (persistent) by default, and the header
    ``x-deduplication-header`` = the message_id (unless the headers have one), which the forwarder sends as
    saved (and, with ``track``, an empty ``x-leveret-notify`` for the forwarder to fill in).
    Returns (the properties' wire form: flags then values, message_id)."""
    props = dict(properties or {})
    if "type" in props:
        props["message_type"] = props.pop("type")
    unknown = set(props) - PROPERTY_NAMES
    if unknown:
        raise ValueError(f"not AMQP basic properties: {', '.join(sorted(unknown))}")
    if not props.get("message_id"):
        props["message_id"] = uuid.uuid4().hex
    if props.get("delivery_mode") is None:
        props["delivery_mode"] = PERSISTENT
    timestamp = props.get("timestamp")
    if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
        props["timestamp"] = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    if isinstance(props.get("expiration"), int):
        props["expiration"] = str(props["expiration"])
    headers = props.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise ValueError("bad AMQP properties: headers must be a mapping")
    props["headers"] = binary_headers({DEDUP_HEADER: str(props["message_id"]), **(headers or {}),
                                       **({NOTIFY_HEADER: ""} if track else {})})
    try:
        header = spec.Basic.Properties(**props).marshal()
    except (TypeError, ValueError, struct.error) as exc:
        raise ValueError(f"bad AMQP properties: {exc}") from None
    return header, str(props["message_id"])


def prepare_message(default_destinations: tuple[str, ...], exchange: str, routing_key: str, body: bytes,
                    properties: Mapping[str, Any] | None = None, destinations: Iterable[str] | None = None,
                    mandatory: bool = True, track: bool = False) -> tuple[Row, str]:
    """Check ``send``'s arguments and encode the message as every storage saves it; (row, message_id)."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body must be bytes, not {type(body).__name__} (encode text first)")
    for name, value in (("exchange", exchange), ("routing_key", routing_key)):
        if not isinstance(value, str) or len(value.encode()) > 255:
            raise ValueError(f"{name} must be a str of at most 255 bytes")
    header, message_id = encode_properties(properties, track)
    dests = default_destinations if destinations is None else check_destinations(destinations)
    return (Row(exchange, routing_key, bool(mandatory), header, bytes(body), dests, message_id if track else None),
            message_id)


def decode_properties(header: bytes) -> spec.Basic.Properties:
    props = spec.Basic.Properties()
    (flags,) = struct.unpack_from(">H", header)
    props.unmarshal(flags, header[2:])
    return props


def binary_headers(value: Any) -> Any:
    """bytes -> bytearray in header tables (pamqp encodes bytearray as a byte array, refuses bytes)."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, Mapping):
        return {k: binary_headers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [binary_headers(v) for v in value]
    return value


def check_destinations(destinations: Iterable[str]) -> tuple[str, ...]:
    if isinstance(destinations, str):
        destinations = (destinations,)
    out = tuple(dict.fromkeys(destinations))
    if not out or not all(isinstance(d, str) and d for d in out):
        raise ValueError("destinations must be one or more non-empty names")
    return out


def destination_stats(rows: Iterable[tuple[str, int, int, float]], errors: Mapping[str, str],
                      now: float) -> dict[str, dict[str, Any]]:
    """``status()``'s answer per destination from (destination, state, count, oldest created) rows and the last
    error of each destination (both storages)."""
    out: dict[str, dict[str, Any]] = {}
    for destination, state, count, oldest in rows:
        entry = out.setdefault(destination, {"pending": 0, "parked": 0, "oldest_age": None, "last_error": None})
        entry["pending" if state == TO_SEND else "parked"] += count
        age = max(0.0, now - oldest)
        entry["oldest_age"] = age if entry["oldest_age"] is None else max(age, entry["oldest_age"])
        entry["last_error"] = errors.get(destination)
    return out
