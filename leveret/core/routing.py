"""Routing, and the one publish entry every message goes through (:meth:`Routing.publish`).

Every publish calls :meth:`Routing.publish` (a part of :class:`~leveret.core.vhost.VHost`): a client's
(AMQP ``basic.publish`` through :meth:`~leveret.core.channel.Channel.publish`, the management API's publish),
the release of a delayed message (:mod:`leveret.core.delays`), dead-lettering (:mod:`leveret.core.dead_letter`)
and the broker's own messages (status replies, the aliveness test, the firehose's copies). It owns, in this
order:

- holding a message an ``x-delayed-message`` exchange delays (``broker.delays.hold``, called from
  :meth:`Routing._targets` only, for the exchange published to and for one reached on the way);
- the status book's look at ``leveret.events`` / ``amq.leveret.status`` (:meth:`StatusBook.observe`);
- routing: exchange-to-exchange bindings, alternate exchanges, sender-selected distribution (CC and BCC
  headers route with extra keys; BCC is removed from the message) or the keys dead-lettering gives;
- what the publisher's :class:`Origin` records: the firehose (``amq.rabbitmq.trace``) and the tracker's
  ``published`` event for a client, ``dead_lettered`` / ``moved`` / ``delay_ended`` for the broker's own
  republishes; and the ``routed`` job-done notice of a message with ``x-leveret-notify`` (core/notices.py);
- enqueueing: the message itself into the first queue, a copy into each other one;
- deduplication (core/dedup.py) for an exchange with ``x-message-deduplication``, around all of the above.

:func:`validate` is the check of a client's message before it is accepted (per-message ``expiration``, CC/BCC
types), shared by AMQP and the management API; it runs before a transaction defers the publish.

The common case (one queue, no delay, no alternate exchange, no CC, no tracing) costs one call
(:meth:`publish`) beyond routing and the enqueue itself.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mypy_extensions import mypyc_attr

from leveret.amqp.fields import field_type

from . import notices
from .errors import PreconditionFailed
from .exchanges import Exchange
from .message import NOTIFY
from .queue import Queue
from .status import OBSERVED
from .tracking import MESSAGE_ID

if TYPE_CHECKING:
    from .broker import Broker
    from .message import Message
    from .tracing import Tracer
    from .vhost import VHost

_HEADERS_FLAG = 0x2000
_EXPIRATION_FLAG = 0x0100
_CHECKED_FLAGS = _HEADERS_FLAG | _EXPIRATION_FLAG
_MAX_EXPIRY = 315360000000  # ten years in milliseconds, as RabbitMQ 3.10
_ERLANG_INTEGER = re.compile(r"[+-]?[0-9]+")


@mypyc_attr(native_class=False)  # a builtin's subclass: mypyc compiles it as a plain Python class
class _Held(tuple):  # type: ignore[type-arg]
    """The type of :data:`HELD`."""

    __slots__ = ()


HELD: Any = _Held()
"""What routing returns when the exchange published to holds the message (x-delayed-message): no queue now,
and no basic.return nor alternate exchange either (an empty sequence, told apart by identity)."""


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (setup.py): dead_letter.py and delays.py subclass it
class Origin:
    """Who publishes, as the one publish entry sees it: what it records of the message once it is routed.

    This base records nothing (the broker's own messages). :class:`Peer` is a client connection's channel
    or the management API; :mod:`leveret.core.dead_letter` and :mod:`leveret.core.delays` have their own.
    ``always``: :meth:`routed` is called for every message (else only when tracing is on or the message has a
    message_id)."""

    __slots__ = ()
    # ClassVar: compiled (setup.py), an instance attribute would not see the value an interpreted subclass sets
    always: ClassVar[bool] = False
    announces: ClassVar[bool] = False  # a publisher's message, first routed: job-done notices say where it went

    def held(self, vhost: VHost, msg: Message) -> None:
        """The exchange published to holds ``msg`` until it is due (x-delayed-message)."""

    def routed(self, vhost: VHost, exchange: Exchange, msg: Message, queues: Sequence[Queue],
               mandatory: bool) -> Sequence[Queue]:
        """``msg`` routes to ``queues`` (maybe none): record it; returns the queues to put it in."""
        return queues


class Peer(Origin):
    """A client publishing or consuming: its connection (``peer``), user and channel number (0 for the
    management API). The firehose and the tracker record these. One per channel, made when it opens."""

    __slots__ = ("channel", "peer", "user")
    announces = True

    def __init__(self, peer: str, user: str, channel: int = 0) -> None:
        self.peer = peer
        self.user = user
        self.channel = channel

    def held(self, vhost: VHost, msg: Message) -> None:
        if vhost.tracer is not None:
            vhost.tracer.published(msg, (), self)

    def routed(self, vhost: VHost, exchange: Exchange, msg: Message, queues: Sequence[Queue],
               mandatory: bool) -> Sequence[Queue]:
        if vhost.tracer is not None:
            vhost.tracer.published(msg, queues, self)
        tracker = vhost.broker.tracker
        if msg.flags & MESSAGE_ID and tracker is not None:
            tracker.record(vhost.name, msg, "published", exchange.name, msg.routing_key,
                           tuple([q.name for q in queues]),
                           "routed" if queues else "returned" if mandatory else "unroutable")
        return queues


def routing_keys(msg: Message) -> list[str]:
    """The message's routing key and its CC keys (RabbitMQ's sender-selected distribution)."""
    keys = [msg.routing_key]
    headers = msg.headers if msg.flags & 0x2000 else None
    if headers:
        for name in ("CC", "BCC"):
            extra = headers.get(name)
            if isinstance(extra, list):
                keys.extend(k for k in extra if isinstance(k, str))
    return keys


def validate(msg: Message) -> None:
    """A client's message, before it is accepted: a per-message ``expiration`` must be RabbitMQ's, CC and BCC
    headers must be arrays. Raises PreconditionFailed with RabbitMQ's text."""
    flags = msg.flags
    if not flags & _CHECKED_FLAGS:
        return
    if flags & _EXPIRATION_FLAG:
        check_expiration(msg.properties.get("expiration"))
    if flags & _HEADERS_FLAG and (b"\x02CC" in msg.header or b"\x03BCC" in msg.header):
        for name in ("CC", "BCC"):
            value = (msg.headers or {}).get(name)
            if value is not None and not isinstance(value, list):
                raise PreconditionFailed(f'invalid message: {{unacceptable_type_in_header,"{name}",'
                                         f'{field_type(value)}}}')


def check_expiration(expiration: Any) -> None:
    """RabbitMQ's rabbit_basic:parse_expiration: a decimal number of milliseconds from 0 to ten years; raises
    PreconditionFailed with RabbitMQ's (Erlang-flavoured) reason otherwise."""
    text = expiration if isinstance(expiration, str) else ""
    match = _ERLANG_INTEGER.match(text)
    if match is None:
        reason = "no_integer"
    elif match.end() != len(text):
        reason = f'{{leftover_string,"{text[match.end():]}"}}'
    else:
        value = int(match.group())
        if 0 <= value <= _MAX_EXPIRY:
            return
        reason = _erlang_pair("value_negative" if value < 0 else "value_too_large", value,
                              column=len(f"invalid expiration '{text}': "))
    raise PreconditionFailed(f"invalid expiration '{text}': {reason}")


def _erlang_pair(atom: str, value: int, column: int) -> str:
    """``{atom,value}`` as Erlang's ``~p`` prints it from ``column``: broken after the comma past 78 columns."""
    flat = f"{{{atom},{value}}}"
    if column + len(flat) <= 78:
        return flat
    return f"{{{atom},\n{' ' * (column + 1)}{value}}}"


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (setup.py): VHost subclasses it
class Routing:
    """Routing and publishing in a vhost (a part of :class:`~leveret.core.vhost.VHost`; the attributes below
    are the vhost's)."""

    broker: Broker
    name: str
    exchanges: dict[str, Exchange]
    tracer: Tracer | None
    _policy_alternates: dict[str, str]

    def publish(self, exchange: Exchange, msg: Message, origin: Origin | None = None, *, mandatory: bool = False,
                keys: list[str] | None = None, checked: bool = False, again: bool = False) -> bool | None:
        """THE publish entry (see the module docstring): route ``msg`` through ``exchange`` (with ``keys``
        instead of its routing key and CC/BCC headers when given: dead-lettering), let ``origin`` record it and
        put it in every queue found, one copy per extra queue. ``msg`` is a new record no queue holds.

        Returns True when every queue took it (or the exchange holds it until due), False when a queue refused
        it (x-overflow reject-publish: a publisher confirm nacks it), None when it routed nowhere (a mandatory
        publish is returned by the caller).

        An exchange with x-message-deduplication drops a message whose id it routed recently (True: a confirm
        acks it, it is not returned) and remembers the id of one every queue took (:meth:`_publish_once`, which
        calls back with ``checked``). ``again``: the broker moves a message it already took (dead-lettering, a
        delayed message when due, the management API's move), which no exchange or queue deduplicates."""
        if exchange.dedup is not None and not (checked or again):
            return self._publish_once(exchange, msg, origin, mandatory, keys)
        if keys is None:
            queues = self.route_all(exchange, msg)
        else:
            if exchange.name in OBSERVED:
                self.broker.status.observe(self, exchange, msg)  # type: ignore[arg-type]
            queues = self.route_keys(exchange, msg, keys)
        if queues is HELD:
            if origin is not None:
                origin.held(self, msg)  # type: ignore[arg-type]
            return True
        if origin is not None and (origin.always or self.tracer is not None or msg.flags & MESSAGE_ID):
            queues = origin.routed(self, exchange, msg, queues, mandatory)  # type: ignore[arg-type]
            if origin.announces and queues and msg.flags & NOTIFY:
                notices.routed(self, msg, queues)  # type: ignore[arg-type]
        if not queues:
            return None
        if len(queues) == 1:
            return queues[0].enqueue(msg, again)
        accepted = True
        first = True
        for queue in queues:
            if not queue.enqueue(msg if first else msg.copy(), again):
                accepted = False
            first = False
        return accepted

    def _publish_once(self, exchange: Exchange, msg: Message, origin: Origin | None, mandatory: bool,
                      keys: list[str] | None) -> bool | None:
        """:meth:`publish` through an exchange with x-message-deduplication (core/dedup.py)."""
        window = exchange.dedup
        key = window.key(msg)
        if key is not None and window.seen(key):
            window.duplicate(msg)
            return True
        result = self.publish(exchange, msg, origin, mandatory=mandatory, keys=keys, checked=True)
        if result is True and key is not None:
            window.add(key, msg)
        return result

    def route_all(self, exchange: Exchange, msg: Message) -> Sequence[Queue]:
        """:meth:`route` plus sender-selected distribution (CC and BCC headers route with extra keys; BCC is
        removed from the message), after the status book's look (core/status.py)."""
        if exchange.name in OBSERVED:  # leveret.events and amq.leveret.status: the status book (core/status.py)
            self.broker.status.observe(self, exchange, msg)  # type: ignore[arg-type]
        header = msg.header
        if msg.flags & _HEADERS_FLAG and (b"\x02CC" in header or b"\x03BCC" in header):
            queues = self.route_keys(exchange, msg, routing_keys(msg))
            if queues is not HELD:
                _strip_bcc(msg)
            return queues
        return self.route(exchange, msg)

    def route(self, exchange: Exchange, msg: Message) -> Sequence[Queue]:
        """The queues ``msg`` goes to through ``exchange`` and any exchanges bound to it, each once; HELD when
        ``exchange`` is an x-delayed-message one that holds ``msg`` until it is due (``broker.delays``). A
        delayed exchange reached on the way holds it too and routes it nowhere now.

        Alternate exchanges as RabbitMQ's: each exchange on the way (the one published to, or one reached
        through an exchange-to-exchange binding or as an alternate) whose own bindings match nothing passes the
        message to its ``alternate-exchange``; an exchange that routes to another exchange has matched."""
        found = self._targets(exchange, msg, None)
        if found is None:
            return HELD
        if not found:
            return ()
        if len(found) == 1:
            (only,) = found
            if type(only) is Queue:
                return (only,)
        return self._walk(exchange, found, msg, None)

    def route_keys(self, exchange: Exchange, msg: Message, keys: list[str]) -> Sequence[Queue]:
        """:meth:`route` with several routing keys (the message's, CC, BCC; or dead-lettering's), as RabbitMQ:
        every exchange on the way, including those reached through exchange-to-exchange bindings and alternate
        exchanges, matches the message with all the keys; an exchange that none of them matches passes the
        message to its alternate exchange."""
        keys = list(dict.fromkeys(keys))
        if keys == [msg.routing_key]:
            return self.route(exchange, msg)
        found = self._targets(exchange, msg, keys)
        if found is None:
            return HELD
        return self._walk(exchange, found, msg, keys)

    def _targets(self, exchange: Exchange, msg: Message, keys: list[str] | None) -> Collection[Any] | None:
        """What ``exchange`` itself routes ``msg`` to (queues and exchanges) with ``keys`` (None: the message's
        routing key), or its alternate exchange when nothing matches; None when a delayed exchange holds it."""
        kind = exchange.type_name
        if kind == "x-delayed-message":
            if self.broker.delays.hold(self, exchange, msg):  # type: ignore[arg-type]
                return None
            headers = msg.headers
        else:
            headers = msg.headers if kind == "headers" else None
        if keys is None:
            routed: Collection[Any] = exchange.route(msg.routing_key, headers)
        else:
            matched: dict[int, Any] = {}
            for key in keys:
                for found in exchange.route(key, headers):
                    matched.setdefault(id(found), found)
            routed = tuple(matched.values())
        if not routed:
            alternate = self._alternate_exchange(exchange)
            routed = (alternate,) if alternate is not None else ()
        return routed

    def _walk(self, exchange: Exchange, found: Collection[Any], msg: Message, keys: list[str] | None) -> list[Queue]:
        """The queues reached from ``found`` (what ``exchange`` routed to), following exchange-to-exchange
        bindings and alternates; each queue once, each exchange visited once."""
        queues: list[Queue] = []
        seen = {id(exchange)}
        pending = list(found)
        while pending:
            dest = pending.pop(0)
            if id(dest) in seen:
                continue
            seen.add(id(dest))
            if isinstance(dest, Queue):
                queues.append(dest)
            elif isinstance(dest, Exchange):
                pending.extend(self._targets(dest, msg, keys) or ())
        return queues

    def _alternate_of(self, exchange: Exchange) -> Any:
        """The name of ``exchange``'s alternate exchange (its argument, else a policy's), or None."""
        return exchange.arguments.get("alternate-exchange") or self._policy_alternates.get(exchange.name)

    def _alternate_exchange(self, exchange: Exchange) -> Exchange | None:
        """The exchange's alternate exchange (argument or policy), when it has one that exists."""
        if not (exchange.arguments or self._policy_alternates):
            return None
        name = self._alternate_of(exchange)
        return self.exchanges.get(name) if isinstance(name, str) else None


def _strip_bcc(msg: Message) -> None:
    headers = msg.headers
    if headers is not None and "BCC" in headers:
        bcc = headers["BCC"]
        msg.bcc = [k for k in bcc if isinstance(k, str)] if isinstance(bcc, list) else None
        props = dict(msg.properties)
        props["headers"] = {k: v for k, v in headers.items() if k != "BCC"}
        msg.set_properties(props)
