"""AMQP 0-9-1 as data: classes, methods, their arguments, content properties and reply codes.

Written from the published AMQP 0-9-1 specification (amqp0-9-1.xml) and RabbitMQ's extensions
(basic.nack, confirm, exchange.bind/unbind, connection.blocked/unblocked, connection.update-secret).
Only facts live here; encoding and decoding are in :mod:`leveret.amqp.codec` (methods, frames) and
:mod:`leveret.amqp.fields` (values), which also holds the value domains and the basic properties.
"""

from __future__ import annotations

from dataclasses import dataclass

# The value domains (bit ... timestamp), the basic properties and the field-type tags are facts of the values,
# kept with their codec in fields.py (which the core may import; this module it may not); named here as well.
from .fields import (  # noqa: F401
    BASIC_PROPERTIES,
    BIT,
    FIELD_TYPES,
    LONG,
    LONGLONG,
    LONGSTR,
    OCTET,
    SHORT,
    SHORTSTR,
    TABLE,
    TIMESTAMP,
)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
PROTOCOL_HEADER_0_9 = b"AMQP\x01\x01\x00\x09"
VERSION_MAJOR = 0
VERSION_MINOR = 9

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_MIN_SIZE = 4096

# Reply codes (constants of the specification).
REPLY_SUCCESS = 200
CONTENT_TOO_LARGE = 311
NO_ROUTE = 312
NO_CONSUMERS = 313
CONNECTION_FORCED = 320
INVALID_PATH = 402
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
RESOURCE_ERROR = 506
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

REPLY_NAMES = {
    REPLY_SUCCESS: "REPLY_SUCCESS",
    CONTENT_TOO_LARGE: "CONTENT_TOO_LARGE",
    NO_ROUTE: "NO_ROUTE",
    NO_CONSUMERS: "NO_CONSUMERS",
    CONNECTION_FORCED: "CONNECTION_FORCED",
    INVALID_PATH: "INVALID_PATH",
    ACCESS_REFUSED: "ACCESS_REFUSED",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_LOCKED: "RESOURCE_LOCKED",
    PRECONDITION_FAILED: "PRECONDITION_FAILED",
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    RESOURCE_ERROR: "RESOURCE_ERROR",
    NOT_ALLOWED: "NOT_ALLOWED",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    INTERNAL_ERROR: "INTERNAL_ERROR",
}
# Codes that close the whole connection (hard errors); the others close a channel.
HARD_ERRORS = frozenset(
    {
        CONNECTION_FORCED,
        INVALID_PATH,
        FRAME_ERROR,
        SYNTAX_ERROR,
        COMMAND_INVALID,
        CHANNEL_ERROR,
        UNEXPECTED_FRAME,
        RESOURCE_ERROR,
        NOT_ALLOWED,
        NOT_IMPLEMENTED,
        INTERNAL_ERROR,
    }
)

CLASS_CONNECTION = 10
CLASS_CHANNEL = 20
CLASS_EXCHANGE = 40
CLASS_QUEUE = 50
CLASS_BASIC = 60
CLASS_CONFIRM = 85
CLASS_TX = 90

CLASS_NAMES = {
    CLASS_CONNECTION: "connection",
    CLASS_CHANNEL: "channel",
    CLASS_EXCHANGE: "exchange",
    CLASS_QUEUE: "queue",
    CLASS_BASIC: "basic",
    CLASS_CONFIRM: "confirm",
    CLASS_TX: "tx",
}


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One method of the protocol: its ids, name, arguments and whether content follows it."""

    class_id: int
    method_id: int
    name: str
    arguments: tuple[tuple[str, str], ...]
    content: bool = False
    synchronous: bool = False
    response: str | None = None

    @property
    def key(self) -> int:
        """The (class, method) pair packed as one int: ``class_id << 16 | method_id``."""
        return (self.class_id << 16) | self.method_id

    @property
    def full_name(self) -> str:
        return f"{CLASS_NAMES[self.class_id]}.{self.name}"


_CLOSE_ARGS = (("reply_code", SHORT), ("reply_text", SHORTSTR), ("class_id", SHORT), ("method_id", SHORT))

_M = MethodSpec
METHODS: tuple[MethodSpec, ...] = (
    # connection
    _M(10, 10, "start", (("version_major", OCTET), ("version_minor", OCTET), ("server_properties", TABLE),
                         ("mechanisms", LONGSTR), ("locales", LONGSTR)), synchronous=True, response="start-ok"),
    _M(10, 11, "start-ok", (("client_properties", TABLE), ("mechanism", SHORTSTR), ("response", LONGSTR),
                            ("locale", SHORTSTR))),
    _M(10, 20, "secure", (("challenge", LONGSTR),), synchronous=True, response="secure-ok"),
    _M(10, 21, "secure-ok", (("response", LONGSTR),)),
    _M(10, 30, "tune", (("channel_max", SHORT), ("frame_max", LONG), ("heartbeat", SHORT)),
       synchronous=True, response="tune-ok"),
    _M(10, 31, "tune-ok", (("channel_max", SHORT), ("frame_max", LONG), ("heartbeat", SHORT))),
    _M(10, 40, "open", (("virtual_host", SHORTSTR), ("capabilities", SHORTSTR), ("insist", BIT)),
       synchronous=True, response="open-ok"),
    _M(10, 41, "open-ok", (("known_hosts", SHORTSTR),)),
    _M(10, 50, "close", _CLOSE_ARGS, synchronous=True, response="close-ok"),
    _M(10, 51, "close-ok", ()),
    _M(10, 60, "blocked", (("reason", SHORTSTR),)),
    _M(10, 61, "unblocked", ()),
    _M(10, 70, "update-secret", (("new_secret", LONGSTR), ("reason", SHORTSTR)), synchronous=True,
       response="update-secret-ok"),
    _M(10, 71, "update-secret-ok", ()),
    # channel
    _M(20, 10, "open", (("out_of_band", SHORTSTR),), synchronous=True, response="open-ok"),
    _M(20, 11, "open-ok", (("channel_id", LONGSTR),)),
    _M(20, 20, "flow", (("active", BIT),), synchronous=True, response="flow-ok"),
    _M(20, 21, "flow-ok", (("active", BIT),)),
    _M(20, 40, "close", _CLOSE_ARGS, synchronous=True, response="close-ok"),
    _M(20, 41, "close-ok", ()),
    # exchange
    _M(40, 10, "declare", (("reserved_1", SHORT), ("exchange", SHORTSTR), ("type", SHORTSTR), ("passive", BIT),
                           ("durable", BIT), ("auto_delete", BIT), ("internal", BIT), ("nowait", BIT),
                           ("arguments", TABLE)), synchronous=True, response="declare-ok"),
    _M(40, 11, "declare-ok", ()),
    _M(40, 20, "delete", (("reserved_1", SHORT), ("exchange", SHORTSTR), ("if_unused", BIT), ("nowait", BIT)),
       synchronous=True, response="delete-ok"),
    _M(40, 21, "delete-ok", ()),
    _M(40, 30, "bind", (("reserved_1", SHORT), ("destination", SHORTSTR), ("source", SHORTSTR),
                        ("routing_key", SHORTSTR), ("nowait", BIT), ("arguments", TABLE)),
       synchronous=True, response="bind-ok"),
    _M(40, 31, "bind-ok", ()),
    _M(40, 40, "unbind", (("reserved_1", SHORT), ("destination", SHORTSTR), ("source", SHORTSTR),
                          ("routing_key", SHORTSTR), ("nowait", BIT), ("arguments", TABLE)),
       synchronous=True, response="unbind-ok"),
    _M(40, 51, "unbind-ok", ()),
    # queue
    _M(50, 10, "declare", (("reserved_1", SHORT), ("queue", SHORTSTR), ("passive", BIT), ("durable", BIT),
                           ("exclusive", BIT), ("auto_delete", BIT), ("nowait", BIT), ("arguments", TABLE)),
       synchronous=True, response="declare-ok"),
    _M(50, 11, "declare-ok", (("queue", SHORTSTR), ("message_count", LONG), ("consumer_count", LONG))),
    _M(50, 20, "bind", (("reserved_1", SHORT), ("queue", SHORTSTR), ("exchange", SHORTSTR),
                        ("routing_key", SHORTSTR), ("nowait", BIT), ("arguments", TABLE)),
       synchronous=True, response="bind-ok"),
    _M(50, 21, "bind-ok", ()),
    _M(50, 30, "purge", (("reserved_1", SHORT), ("queue", SHORTSTR), ("nowait", BIT)),
       synchronous=True, response="purge-ok"),
    _M(50, 31, "purge-ok", (("message_count", LONG),)),
    _M(50, 40, "delete", (("reserved_1", SHORT), ("queue", SHORTSTR), ("if_unused", BIT), ("if_empty", BIT),
                          ("nowait", BIT)), synchronous=True, response="delete-ok"),
    _M(50, 41, "delete-ok", (("message_count", LONG),)),
    _M(50, 50, "unbind", (("reserved_1", SHORT), ("queue", SHORTSTR), ("exchange", SHORTSTR),
                          ("routing_key", SHORTSTR), ("arguments", TABLE)), synchronous=True, response="unbind-ok"),
    _M(50, 51, "unbind-ok", ()),
    # basic
    _M(60, 10, "qos", (("prefetch_size", LONG), ("prefetch_count", SHORT), ("global", BIT)),
       synchronous=True, response="qos-ok"),
    _M(60, 11, "qos-ok", ()),
    _M(60, 20, "consume", (("reserved_1", SHORT), ("queue", SHORTSTR), ("consumer_tag", SHORTSTR),
                           ("no_local", BIT), ("no_ack", BIT), ("exclusive", BIT), ("nowait", BIT),
                           ("arguments", TABLE)), synchronous=True, response="consume-ok"),
    _M(60, 21, "consume-ok", (("consumer_tag", SHORTSTR),)),
    _M(60, 30, "cancel", (("consumer_tag", SHORTSTR), ("nowait", BIT)), synchronous=True, response="cancel-ok"),
    _M(60, 31, "cancel-ok", (("consumer_tag", SHORTSTR),)),
    _M(60, 40, "publish", (("reserved_1", SHORT), ("exchange", SHORTSTR), ("routing_key", SHORTSTR),
                           ("mandatory", BIT), ("immediate", BIT)), content=True),
    _M(60, 50, "return", (("reply_code", SHORT), ("reply_text", SHORTSTR), ("exchange", SHORTSTR),
                          ("routing_key", SHORTSTR)), content=True),
    _M(60, 60, "deliver", (("consumer_tag", SHORTSTR), ("delivery_tag", LONGLONG), ("redelivered", BIT),
                           ("exchange", SHORTSTR), ("routing_key", SHORTSTR)), content=True),
    _M(60, 70, "get", (("reserved_1", SHORT), ("queue", SHORTSTR), ("no_ack", BIT)), synchronous=True,
       response="get-ok"),
    _M(60, 71, "get-ok", (("delivery_tag", LONGLONG), ("redelivered", BIT), ("exchange", SHORTSTR),
                          ("routing_key", SHORTSTR), ("message_count", LONG)), content=True),
    _M(60, 72, "get-empty", (("cluster_id", SHORTSTR),)),
    _M(60, 80, "ack", (("delivery_tag", LONGLONG), ("multiple", BIT))),
    _M(60, 90, "reject", (("delivery_tag", LONGLONG), ("requeue", BIT))),
    _M(60, 100, "recover-async", (("requeue", BIT),)),
    _M(60, 110, "recover", (("requeue", BIT),), synchronous=True, response="recover-ok"),
    _M(60, 111, "recover-ok", ()),
    _M(60, 120, "nack", (("delivery_tag", LONGLONG), ("multiple", BIT), ("requeue", BIT))),
    # confirm (RabbitMQ extension)
    _M(85, 10, "select", (("nowait", BIT),), synchronous=True, response="select-ok"),
    _M(85, 11, "select-ok", ()),
    # tx
    _M(90, 10, "select", (), synchronous=True, response="select-ok"),
    _M(90, 11, "select-ok", ()),
    _M(90, 20, "commit", (), synchronous=True, response="commit-ok"),
    _M(90, 21, "commit-ok", ()),
    _M(90, 30, "rollback", (), synchronous=True, response="rollback-ok"),
    _M(90, 31, "rollback-ok", ()),
)

METHODS_BY_KEY: dict[int, MethodSpec] = {m.key: m for m in METHODS}
METHODS_BY_NAME: dict[str, MethodSpec] = {m.full_name: m for m in METHODS}


def method(name: str) -> MethodSpec:
    """The spec of ``"class.method"``; raises KeyError for a name the protocol does not have."""
    return METHODS_BY_NAME[name]
