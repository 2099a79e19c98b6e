"""STOMP headers <-> AMQP 0-9-1 basic properties, and STOMP destinations, as RabbitMQ's STOMP plugin maps them.

Properties are the dict :func:`leveret.amqp.fields.decode_properties` gives (``content_type``, ``headers``, ...),
so this module needs nothing beyond the standard library.

SEND -> properties: ``content-type``, ``content-encoding``, ``correlation-id``, ``reply-to``, ``expiration``,
``type``, ``user-id``, ``app-id`` as strings, ``priority`` and ``timestamp`` as integers, ``amqp-message-id`` as
``message_id``, ``persistent:true`` as delivery mode 2; every other header (``receipt``, ``content-length`` and
``transaction`` too, as RabbitMQ does) becomes a long string in the ``headers`` table (present even when empty),
in reverse frame order.
Properties -> MESSAGE: the same headers back, string and 32/64-bit integer values of the headers table as headers
(other types are left out, as RabbitMQ does), and a ``reply-to`` that is not a destination prefixed with
``/reply-queue/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# property name -> STOMP header, in the order RabbitMQ writes them into a MESSAGE frame (after the headers table)
_HEADER_ORDER = (("app_id", "app-id"), ("user_id", "user-id"), ("type", "type"), ("timestamp", "timestamp"),
                 ("message_id", "amqp-message-id"), ("expiration", "expiration"), ("reply_to", "reply-to"),
                 ("correlation_id", "correlation-id"), ("priority", "priority"), ("delivery_mode", "persistent"),
                 ("content_encoding", "content-encoding"), ("content_type", "content-type"))
# headers that are properties (and the destination), not entries of the headers table
PROPERTY_HEADERS = frozenset({"content-type", "content-encoding", "persistent", "priority", "correlation-id",
                              "reply-to", "expiration", "amqp-message-id", "timestamp", "type", "user-id",
                              "app-id", "destination"})
_TEXT = (("content-type", "content_type"), ("content-encoding", "content_encoding"),
         ("correlation-id", "correlation_id"), ("reply-to", "reply_to"), ("expiration", "expiration"),
         ("amqp-message-id", "message_id"), ("type", "type"), ("user-id", "user_id"), ("app-id", "app_id"))
_INTEGER = (("priority", "priority", 255), ("timestamp", "timestamp", 2**64 - 1))

DEST_PREFIXES = ("/temp-queue", "/exchange", "/topic", "/queue", "/amq/queue", "/reply-queue/")


class HeaderError(ValueError):
    """A header value that cannot be a property: ``message`` and ``detail`` for the ERROR frame."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(detail)
        self.message = message
        self.detail = detail


def first_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Each header's first value (the one that counts), in frame order."""
    found: dict[str, str] = {}
    for name, value in headers:
        found.setdefault(name, value)
    return found


def properties_from_headers(headers: dict[str, str]) -> dict[str, Any]:
    """The basic properties of a SEND frame whose (first) headers are ``headers``."""
    props: dict[str, Any] = {}
    for header, prop in _TEXT:
        value = headers.get(header)
        if value is not None:
            if len(value.encode()) > 255:
                raise HeaderError("Invalid header", f"'{header}' is longer than 255 bytes (an AMQP short string)")
            props[prop] = value
    for header, prop, limit in _INTEGER:
        text = headers.get(header)
        if text is not None:
            text = text.strip()
            if not (text.isdigit() and int(text) <= limit):
                raise HeaderError("Invalid header", f"'{header}' must be an integer from 0 to {limit}, not "
                                                    f"'{text[:40]}'")
            props[prop] = int(text)
    if headers.get("persistent") == "true":
        props["delivery_mode"] = 2
    # always a table, empty when there is nothing for it, as RabbitMQ
    props["headers"] = {name: value for name, value in reversed(headers.items()) if name not in PROPERTY_HEADERS}
    return props


def headers_from_properties(props: dict[str, Any]) -> list[tuple[str, str]]:
    """The MESSAGE headers that carry ``props`` (after subscription, destination, message-id, redelivered, ack)."""
    out: list[tuple[str, str]] = []
    table = props.get("headers")
    if isinstance(table, dict):
        for name, value in table.items():
            if isinstance(value, str):
                out.append((name, value))
            elif isinstance(value, int) and not isinstance(value, bool) and getattr(value, "field_tag", b"l") == b"l":
                out.append((name, str(int(value))))  # 'I' (a plain int) and 'l' fields; other widths are left out
    for prop, header in _HEADER_ORDER:
        value = props.get(prop)
        if value is None:
            continue
        if prop == "delivery_mode":
            if value == 2:
                out.append((header, "true"))
        elif prop == "reply_to" and not value.startswith(DEST_PREFIXES):
            out.append((header, "/reply-queue/" + value))
        else:
            out.append((header, str(value)))
    return out


# --- destinations ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """A parsed destination: ``kind`` is queue, amqqueue, topic, exchange, temp_queue or reply_queue; ``name``
    the queue, topic key, exchange or temporary queue id; ``pattern`` an exchange destination's routing key or
    binding pattern (None when absent)."""

    kind: str
    name: str
    pattern: str | None = None

    def routing(self) -> tuple[str, str]:
        """The exchange and routing key a SEND to this destination publishes with."""
        if self.kind == "exchange":
            return self.name, self.pattern or ""
        if self.kind == "topic":
            return "amq.topic", self.name
        return "", self.name


class DestinationError(ValueError):
    """A destination header that names no destination: ``message`` and ``detail`` (RabbitMQ's texts)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(detail)
        self.message = message
        self.detail = detail


def _unescape(part: str) -> str:
    return part.replace("%2F", "/")


def parse_destination(text: str) -> Destination:
    """``/queue/NAME``, ``/amq/queue/NAME``, ``/topic/KEY``, ``/exchange/NAME[/PATTERN]``, ``/temp-queue/NAME``,
    ``/reply-queue/NAME`` (``%2F`` in a part stands for ``/``). Anything else is a DestinationError; unlike
    RabbitMQ, a plain name (no leading ``/``) is one too."""
    parts = text.split("/")
    if len(parts) > 1 and parts[0] == "":
        kind = parts[1]
        if kind == "reply-queue" and len(parts) > 2:  # a reply queue's name may hold slashes
            if not text[len("/reply-queue/"):]:
                raise DestinationError("Invalid destination", "'/' is not a valid reply_queue destination\n")
            return Destination("reply_queue", text[len("/reply-queue/"):])
        if kind == "amq" and len(parts) > 2 and parts[2] == "queue":
            return _simple("amqqueue", "/amq/queue", parts[3:])
        if kind == "exchange":
            rest = parts[2:]
            if not rest or rest[0] == "" or len(rest) > 2:
                raise DestinationError("Invalid destination", f"'{'/' + '/'.join(rest) if rest else ''}' is not a "
                                                              "valid exchange destination\n")
            return Destination("exchange", _unescape(rest[0]), _unescape(rest[1]) if len(rest) == 2 else None)
        if kind in ("queue", "topic", "temp-queue"):
            return _simple(kind.replace("-", "_"), "/" + kind, parts[2:])
    raise DestinationError("Unknown destination", f"'{text}' is not a valid destination.\nValid destination types "
                                                  f"are: {', '.join(DEST_PREFIXES)}.\n")


def _simple(kind: str, prefix: str, rest: list[str]) -> Destination:
    if len(rest) == 1 and rest[0]:
        return Destination(kind, _unescape(rest[0]))
    raise DestinationError("Invalid destination", f"'{'/' + '/'.join(rest) if rest else ''}' is not a valid "
                                                  f"{kind} destination\n")


def _escape(part: str) -> str:
    out = []
    for char in part:
        code = ord(char)
        if char == "/":
            out.append("%2F")
        elif char == "%":
            out.append("%25")
        elif code < 32 or code > 127:
            out.extend(f"%{byte:02X}" for byte in char.encode())
        else:
            out.append(char)
    return "".join(out)


def format_destination(exchange: str, routing_key: str) -> str:
    """The ``destination`` header of a MESSAGE routed by ``exchange`` with ``routing_key``."""
    if exchange == "":
        return "/queue/" + _escape(routing_key)
    if exchange == "amq.topic":
        return "/topic/" + _escape(routing_key)
    if routing_key == "":
        return "/exchange/" + _escape(exchange)
    return f"/exchange/{_escape(exchange)}/{_escape(routing_key)}"
