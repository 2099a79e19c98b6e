"""A virtual host (:class:`VHost`): its exchanges, queues, bindings and policies, and the declare, delete, bind
and unbind operations with RabbitMQ's checks and error texts. Publishing and routing are in
:mod:`leveret.core.routing` (VHost is a :class:`~leveret.core.routing.Routing`), dead-lettering in
:mod:`leveret.core.dead_letter`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from leveret.amqp.fields import field_type

from .access import Access, reached
from .channel import REPLY_TO
from .dead_letter import dead_letter as _dead_letter
from .dedup import make_window
from .errors import AccessRefused, CommandInvalid, NotFound, PreconditionFailed, ResourceLocked
from .exchanges import EXCHANGE_TYPES, Exchange, create_exchange, validate_binding_arguments
from .lifecycle import check_queue_type, merge_policy, parse_settings, queue_type
from .policies import Policy
from .policies import effective as effective_policy
from .queue import Consumer, Queue
from .replies import RemoteReplies
from .routing import Routing
from .status import QUERY_EXCHANGE, STATUS_ARGUMENT, wants_status
from .tracing import TRACE_EXCHANGE, Tracer

if TYPE_CHECKING:
    from .broker import Broker
    from .message import Message
    from .session import Session

log = logging.getLogger("leveret.broker")

DEFAULT_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


class DefaultExchange(Exchange):
    """The nameless direct exchange every queue is bound to by its name. It cannot be bound or unbound."""

    type_name = "direct"

    def __init__(self, vhost: VHost) -> None:
        super().__init__("", durable=True)
        self.queues = vhost.queues
        self.reply_queues = vhost.broker.reply_queues
        self.remote_replies = vhost.remote_replies

    def route(self, routing_key: str, headers: dict[str, Any] | None) -> tuple[Queue, ...]:
        queue = self.queues.get(routing_key)
        if queue is None:
            if not routing_key.startswith(REPLY_TO):
                return ()
            queue = self.reply_queues.get(routing_key) or self.remote_replies.route(routing_key)
            if queue is None:
                return ()
        return (queue,)

    def bind(self, destination: Hashable, routing_key: str, arguments: dict[str, Any] | None = None) -> bool:
        raise AccessRefused("operation not permitted on the default exchange")

    def unbind(self, destination: Hashable, routing_key: str, arguments: dict[str, Any] | None = None) -> bool:
        raise AccessRefused("operation not permitted on the default exchange")


def strip_crlf(name: str) -> str:
    """RabbitMQ's strip_cr_lf: a queue or exchange name given to declare, bind, unbind or delete loses its CR and
    LF characters (``que\nue`` is ``queue``). Publish, get, consume and purge take names as given."""
    if "\n" in name or "\r" in name:
        return name.replace("\n", "").replace("\r", "")
    return name


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)  # not the codec's width types' reprs (LongInt(5))
    if isinstance(value, float):
        return float.__repr__(value)
    return repr(value) if not isinstance(value, str) else value


def _check_binding(access: Access, kind: str, destination: str, source: str) -> None:
    """RabbitMQ's binding_action: write on the destination, then the default exchange refused at either
    end, then read on the source exchange."""
    access.write(kind, destination)
    if not source or (kind == "exchange" and not destination):
        raise AccessRefused("operation not permitted on the default exchange")
    access.read("exchange", source)


class VHost(Routing):
    """A virtual host: the namespace of exchanges and queues. Routing and the one publish entry are in
    :class:`~leveret.core.routing.Routing`."""

    def dead_letter(self, queue: Queue, msg: Message, reason: str) -> None:
        """leveret.core.dead_letter's (a method, not the function as a class attribute: mypyc, setup.py, binds
        no function that way)."""
        _dead_letter(self, queue, msg, reason)

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.queues: dict[str, Queue] = {}
        self.exchanges: dict[str, Exchange] = {}
        self.policies: dict[str, Policy] = {}
        self.limits: dict[str, int] = {}  # max-connections, max-queues (leveret.core.access)
        self._policy_alternates: dict[str, str] = {}  # exchange -> alternate-exchange set by a policy
        self.remote_replies = RemoteReplies(self)  # several nodes: reply addresses of other nodes (core/replies.py)
        self.exchanges[""] = DefaultExchange(self)
        for ex_name, ex_type in DEFAULT_EXCHANGES:
            self.exchanges[ex_name] = create_exchange(ex_type, ex_name, durable=True)
        self.exchanges[TRACE_EXCHANGE] = create_exchange("topic", TRACE_EXCHANGE, durable=True, internal=True)
        self.exchanges[QUERY_EXCHANGE] = create_exchange("direct", QUERY_EXCHANGE, durable=True)  # core/status.py
        self.tracer: Tracer | None = None  # the firehose, while tracing is on (core/tracing.py)

    # --- exchanges ---------------------------------------------------------------------------------

    def exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise NotFound(f"no exchange '{name}' in vhost '{self.name}'")
        return exchange

    def exchange_for_publish(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise NotFound(f"no exchange '{name}' in vhost '{self.name}'")
        if exchange.internal:
            raise AccessRefused(f"cannot publish to internal exchange '{name}' in vhost '{self.name}'")
        return exchange

    def declare_exchange(self, name: str, type_name: str, *, passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: dict[str, Any] | None = None, access: Access | None = None) -> Exchange:
        """``access``: the client's permissions (None for the broker's own callers), checked as RabbitMQ does:
        configure on the exchange; for a new one with an alternate exchange, read on it and write on the AE."""
        arguments = arguments or {}
        name = strip_crlf(name)
        if not name:
            raise AccessRefused("operation not permitted on the default exchange")
        if passive:
            return self.exchange(name)
        if type_name not in EXCHANGE_TYPES:
            raise CommandInvalid(f"unknown exchange type '{type_name}'")
        if access is not None:
            access.configure("exchange", name)
        existing = self.exchanges.get(name)
        if existing is not None:
            checks = (("type", type_name, existing.type_name), ("durable", durable, existing.durable),
                      ("auto_delete", auto_delete, existing.auto_delete),
                      ("internal", internal, existing.internal))
            for arg, received, current in checks:
                if received != current:
                    raise PreconditionFailed(f"inequivalent arg '{arg}' for exchange '{name}' in vhost "
                                             f"'{self.name}': received '{_describe(received)}' but current is "
                                             f"'{_describe(current)}'")
            self._check_arguments("exchange", name, arguments, existing.arguments, EXCHANGE_EQUIVALENCE_ARGS)
            return existing
        if name.startswith("amq."):
            raise AccessRefused(f"exchange name '{name}' contains reserved prefix 'amq.*'")
        alternate = arguments.get("alternate-exchange")
        if alternate is not None and not isinstance(alternate, str):
            raise PreconditionFailed(f"invalid type '{field_type(alternate)}' for arg 'alternate-exchange' in "
                                     f"exchange '{name}' in vhost '{self.name}'")
        if access is not None and alternate is not None:
            access.read("exchange", name)
            access.write("exchange", alternate)
        window = make_window(arguments, "exchange", self.name, name, durable, self.broker)  # 406 when invalid
        exchange = create_exchange(type_name, name, durable=durable, auto_delete=auto_delete, internal=internal,
                                   arguments=arguments)
        exchange.dedup = window
        self.exchanges[name] = exchange
        if self.policies:
            self._apply_exchange_policy(exchange)
        if self.broker.durability is not None:
            self.broker.durability.save_exchange(self.name, exchange)
        return exchange

    def _check_arguments(self, kind: str, name: str, received: dict[str, Any], current: dict[str, Any],
                         keys: tuple[str, ...]) -> None:
        """RabbitMQ's rabbit_misc:assert_args_equivalence: only ``keys`` are compared (other arguments may
        differ), integers of any width compare equal, and the texts are RabbitMQ's."""
        for key in keys:
            new, old = received.get(key, _ABSENT), current.get(key, _ABSENT)
            if new is _ABSENT and old is _ABSENT:
                continue
            if new is not _ABSENT and old is not _ABSENT:
                if _type_class(new) == _type_class(old) and new == old:
                    continue
                raise PreconditionFailed(f"inequivalent arg '{key}' for {kind} '{name}' in vhost '{self.name}': "
                                         f"received '{_describe(new)}' but current is '{_describe(old)}'")
            raise PreconditionFailed(f"inequivalent arg '{key}' for {kind} '{name}' in vhost '{self.name}': "
                                     f"received {_typed_value(new)} but current is {_typed_value(old)}")

    def delete_exchange(self, name: str, if_unused: bool = False, access: Access | None = None) -> None:
        name = strip_crlf(name)
        if not name:
            raise AccessRefused("operation not permitted on the default exchange")
        if name.startswith("amq."):
            raise AccessRefused(f"deletion of system exchange '{name}' in vhost '{self.name}' not allowed")
        if access is not None:
            access.configure("exchange", name)
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        if if_unused and (exchange.has_bindings() or self._is_destination(exchange)):
            raise PreconditionFailed(f"exchange '{name}' in vhost '{self.name}' in use")
        self._remove_exchange(exchange)

    def _is_destination(self, exchange: Exchange) -> bool:
        return any(b.destination is exchange for ex in self.exchanges.values() for b in ex.bindings())

    def _remove_exchange(self, exchange: Exchange) -> None:
        del self.exchanges[exchange.name]
        if self.broker.durability is not None:
            self.broker.durability.delete_exchange(self.name, exchange)
        for other in list(self.exchanges.values()):
            if other.name and other.unbind_all(exchange):
                self._maybe_auto_delete(other)

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        if exchange.auto_delete and not exchange.has_bindings() and exchange.name in self.exchanges:
            self._remove_exchange(exchange)

    def bind_exchange(self, destination: str, source: str, routing_key: str, arguments: dict[str, Any],
                      access: Access | None = None) -> None:
        destination, source = strip_crlf(destination), strip_crlf(source)
        if access is not None:
            _check_binding(access, "exchange", destination, source)
        src, dst = self._binding_ends(source, destination)
        self._validate_binding(src, arguments)
        if src.bind(dst, routing_key, arguments):
            self._store_binding(src, dst, routing_key, arguments, True)

    def unbind_exchange(self, destination: str, source: str, routing_key: str, arguments: dict[str, Any],
                        access: Access | None = None) -> None:
        destination, source = strip_crlf(destination), strip_crlf(source)
        if access is not None:
            _check_binding(access, "exchange", destination, source)
        if not source or not destination:
            raise AccessRefused("operation not permitted on the default exchange")
        src, dst = self.exchanges.get(source), self.exchanges.get(destination)
        if src is None or dst is None:
            return  # RabbitMQ 3.x: unbinding from or to a missing exchange is a no-op
        if src.unbind(dst, routing_key, arguments):
            self._store_binding(src, dst, routing_key, arguments, False)
            self._maybe_auto_delete(src)

    def _store_binding(self, source: Exchange, destination: Exchange | Queue, routing_key: str,
                       arguments: dict[str, Any], add: bool) -> None:
        if self.broker.durability is not None:
            self.broker.durability.binding(self.name, source, destination, routing_key, arguments, add)

    def _binding_ends(self, source: str, destination: str) -> tuple[Exchange, Exchange]:
        if not source or not destination:
            raise AccessRefused("operation not permitted on the default exchange")
        return self.exchange(source), self.exchange(destination)

    @staticmethod
    def _validate_binding(exchange: Exchange, arguments: dict[str, Any]) -> None:
        try:
            validate_binding_arguments(exchange.type_name, arguments)
        except ValueError as exc:
            raise PreconditionFailed(str(exc)) from None

    # --- queues ------------------------------------------------------------------------------------

    def queue(self, name: str, session: Session | None = None) -> Queue:
        """The named queue, checking exclusive ownership against ``session`` (None: no check)."""
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' in vhost '{self.name}'")
        owner = queue.exclusive_owner
        if owner is not None and session is not None and owner is not session:
            self._locked(name)
        return queue

    def _locked(self, name: str) -> None:
        raise ResourceLocked(f"cannot obtain exclusive access to locked queue '{name}' in vhost '{self.name}'. "
                             "It could be originally declared on another connection or the exclusive property "
                             "value does not match that of the original declaration.")

    def declare_queue(self, session: Session | None, name: str, *, passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None, access: Access | None = None,
                      restore: bool = False) -> Queue:
        """``access`` as for :meth:`declare_exchange`: configure on the queue (its generated name for a
        server-named one); for a new queue with a dead-letter exchange, read on it and write on the DLX.
        ``restore``: another node's durable queue (core/shared.py), whose name may be one it generated (amq.gen-)
        and whose vhost queue limit was checked there."""
        arguments = arguments or {}
        name = strip_crlf(name)
        if passive:
            queue = self.queue(name, session)
            queue.touch()  # a passive declare is a use: it extends an x-expires lease, as in RabbitMQ
            return queue
        requested_durable = durable
        durable = durable and not exclusive  # RabbitMQ: an exclusive queue is never durable
        if not name:
            name = "amq.gen-" + secrets.token_urlsafe(16)
        elif name.startswith("amq.") and not restore:
            raise AccessRefused(f"queue name '{name}' contains reserved prefix 'amq.*'")
        if access is not None:
            access.configure("queue", name)
        existing = self.queues.get(name)
        if existing is None:
            check_queue_type(arguments, name, self.name, durable=requested_durable, exclusive=exclusive,
                             auto_delete=auto_delete)
        else:
            if existing.exclusive_owner is not (session if exclusive else None):
                self._locked(name)  # RabbitMQ's strict check: owner and exclusive flag must both match
            checks = (("durable", durable, existing.durable), ("auto_delete", auto_delete, existing.auto_delete))
            for arg, received, current in checks:
                if received != current:
                    raise PreconditionFailed(f"inequivalent arg '{arg}' for queue '{name}' in vhost '{self.name}': "
                                             f"received '{_describe(received)}' but current is "
                                             f"'{_describe(current)}'")
            if queue_type(arguments) != queue_type(existing.arguments):  # x-queue-type classic is the default
                self._check_arguments("queue", name, arguments, existing.arguments, ("x-queue-type",))
            self._check_arguments("queue", name, arguments, existing.arguments, QUEUE_EQUIVALENCE_ARGS)
            if wants_status(arguments, name, self.name) and existing.status is None:
                self._enable_status(existing)  # x-leveret-status is not compared: a redeclare may switch it on
            existing.touch()
            return existing
        limit = None if restore else reached(self.limits, "max-queues", len(self.queues))
        if limit is not None:
            raise PreconditionFailed(f"cannot declare queue '{name}': queue limit in vhost '{self.name}' ({limit}) "
                                     "is reached")
        dead_letter_exchange = arguments.get("x-dead-letter-exchange")
        if access is not None and isinstance(dead_letter_exchange, str):
            access.read("queue", name)
            access.write("exchange", dead_letter_exchange)
        parse_settings(arguments, name, self.name)  # 406 for invalid x- arguments, before anything changes
        wants_status(arguments, name, self.name)
        queue = Queue(self, name, durable=durable, exclusive_owner=session if exclusive else None,
                      auto_delete=auto_delete, arguments=arguments)
        self.queues[name] = queue
        if self.policies:
            self._apply_queue_policy(queue)
        if exclusive and session is not None:
            session.exclusive_queues.append(queue)
        if self.broker.durability is not None:  # durable ones (several nodes: every one, docs/cluster.md)
            self.broker.durability.save_queue(queue)
        return queue

    def _enable_status(self, queue: Queue) -> None:
        queue.arguments[STATUS_ARGUMENT] = True
        queue.status = self.broker.status
        if self.broker.durability is not None:
            self.broker.durability.save_queue(queue)

    def delete_queue(self, name: str, session: Session | None, if_unused: bool = False,
                     if_empty: bool = False, access: Access | None = None) -> int:
        """Delete a queue; returns the number of ready messages it held. A missing queue is not an error."""
        name = strip_crlf(name)
        if access is not None:
            access.configure("queue", name)
        queue = self.queues.get(name)
        if queue is None:
            return 0
        self.queue(name, session)
        if if_unused and queue.consumers:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' in use")
        if if_empty and queue.messages:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' not empty")
        return self.remove_queue(queue)

    def remove_queue(self, queue: Queue) -> int:
        if self.queues.get(queue.name) is not queue:
            return 0
        del self.queues[queue.name]
        queue.deleted = True
        queue.stop_timers()
        if self.broker.durability is not None:  # durable ones (several nodes: every one)
            self.broker.durability.delete_queue(queue)
        count = queue.message_count
        queue.purge("queue_deleted")
        for consumer in list(queue.consumers):
            queue.remove_consumer(consumer)
            consumer.channel.server_cancel(consumer)
        for exchange in list(self.exchanges.values()):
            if exchange.name and exchange.unbind_all(queue):
                self._maybe_auto_delete(exchange)
        owner = queue.exclusive_owner
        if owner is not None and queue in owner.exclusive_queues:
            owner.exclusive_queues.remove(queue)
        return count

    def bind_queue(self, queue_name: str, exchange_name: str, routing_key: str, arguments: dict[str, Any],
                   session: Session | None, access: Access | None = None) -> None:
        """Raises, in RabbitMQ's order: 403 default exchange, 404 exchange, 404 queue, 405 exclusive queue
        (after the permission checks: write on the queue, read on the exchange)."""
        queue_name, exchange_name = strip_crlf(queue_name), strip_crlf(exchange_name)
        if access is not None:
            _check_binding(access, "queue", queue_name, exchange_name)
        if not exchange_name:
            raise AccessRefused("operation not permitted on the default exchange")
        exchange = self.exchange(exchange_name)
        queue = self.queue(queue_name, session)
        self._validate_binding(exchange, arguments)
        if exchange.bind(queue, routing_key, arguments):
            self._store_binding(exchange, queue, routing_key, arguments, True)

    def unbind_queue(self, queue_name: str, exchange_name: str, routing_key: str, arguments: dict[str, Any],
                     session: Session | None, access: Access | None = None) -> None:
        """Removing a binding that does not exist (or whose exchange or queue does not) is not an error,
        as in RabbitMQ 3.x; an existing binding to another connection's exclusive queue is (405)."""
        queue_name, exchange_name = strip_crlf(queue_name), strip_crlf(exchange_name)
        if access is not None:
            _check_binding(access, "queue", queue_name, exchange_name)
        if not exchange_name:
            raise AccessRefused("operation not permitted on the default exchange")
        exchange = self.exchanges.get(exchange_name)
        queue = self.queues.get(queue_name)
        if exchange is None or queue is None or not exchange.has_binding(queue, routing_key, arguments):
            return
        self.queue(queue_name, session)
        if exchange.unbind(queue, routing_key, arguments):
            self._store_binding(exchange, queue, routing_key, arguments, False)
            self._maybe_auto_delete(exchange)

    def remove_consumer(self, consumer: Consumer) -> None:
        queue = consumer.queue
        queue.remove_consumer(consumer)
        if queue.auto_delete and not queue.consumers and queue.had_consumers and not queue.deleted:
            self.remove_queue(queue)

    # --- policies ----------------------------------------------------------------------------------

    def apply_policies(self) -> None:
        """Re-evaluate which policy applies to every queue and exchange (after a policy changed)."""
        for queue in list(self.queues.values()):
            self._apply_queue_policy(queue)
        self._policy_alternates.clear()
        for exchange in self.exchanges.values():
            self._apply_exchange_policy(exchange)

    def _apply_queue_policy(self, queue: Queue) -> None:
        policy = effective_policy(self.policies, queue.name, "queue")
        queue.policy = policy.name if policy is not None else None
        arguments = merge_policy(queue.arguments, policy.definition if policy is not None else None)
        try:
            settings = parse_settings(arguments, queue.name, self.name)
        except PreconditionFailed as exc:
            log.warning("policy %s not applied to queue '%s': %s", queue.policy, queue.name, exc.text)
            return
        if settings != queue.settings:
            queue.configure(settings)

    def _apply_exchange_policy(self, exchange: Exchange) -> None:
        if not exchange.name:
            return
        policy = effective_policy(self.policies, exchange.name, "exchange")
        alternate = policy.definition.get("alternate-exchange") if policy is not None else None
        if isinstance(alternate, str):
            self._policy_alternates[exchange.name] = alternate
        else:
            self._policy_alternates.pop(exchange.name, None)




_ABSENT: Any = object()

# The arguments RabbitMQ 3.10 compares when a classic queue or an exchange is declared again; others may differ.
QUEUE_EQUIVALENCE_ARGS = (
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-length",
    "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode", "x-queue-version",
    "x-single-active-consumer", "x-queue-master-locator",
)
EXCHANGE_EQUIVALENCE_ARGS = ("alternate-exchange",)


def _type_class(value: Any) -> str:
    """RabbitMQ's type_class: integers of every width are one class, floats another."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return field_type(value)


def _typed_value(value: Any) -> str:
    if value is _ABSENT:
        return "none"
    return f"the value '{_describe(value)}' of type '{field_type(value)}'"
