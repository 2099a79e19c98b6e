"""The broker's registry: vhosts with their exchanges, queues and bindings; users; client sessions.

Everything here is synchronous and frame-free. Operations raise :mod:`leveret.core.errors` exceptions with
RabbitMQ's wording; the protocol adapters translate them.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field
from typing import Any

from leveret.amqp.fields import field_type
from leveret.store.base import PermissionDef, PolicyDef, Store, UserDef

from . import audit as _audit
from .access import USER_LIMITS, VHOST_LIMITS, Access, Permission, reached, validate_limits
from .channel import REPLY_TO, Channel, Sink
from .delays import DelayedMessages
from .durability import Durability
from .errors import AccessRefused, CommandInvalid, NotAllowed, NotFound, PreconditionFailed, ResourceLocked
from .exchanges import EXCHANGE_TYPES, Exchange, create_exchange, validate_binding_arguments
from .lifecycle import (
    check_queue_type,
    dead_letter_copy,
    is_cycle,
    merge_policy,
    parse_settings,
    queue_type,
    routing_keys,
)
from .message import Message
from .passwords import check_password, hash_password
from .policies import Policy, validate_policy
from .policies import effective as effective_policy
from .queue import Consumer, Queue
from .status import OBSERVED, QUERY_EXCHANGE, STATUS_ARGUMENT, StatusBook, wants_status
from .timers import SystemTimers, Timers
from .tracing import TRACE_EXCHANGE, Tracer
from .tracking import MESSAGE_ID, Tracker

log = logging.getLogger("leveret.broker")

DEFAULT_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


def process_rss() -> int:
    """This process's resident set size in bytes (/proc/self/statm, as RabbitMQ reads it); 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryMonitor:
    """Resource alarms, as RabbitMQ's: memory (alarm above ``high``) and free disk space (alarm set by whoever
    measures it). While either is on, publishers are blocked.

    ``used`` is what the messages held in memory cost: their bodies plus RECORD_COST per record, counted as
    they come and go (so a flood of empty messages counts too). ``rss`` is the process's resident memory,
    sampled by the server (:meth:`sample`, every 100 ms) and whenever ``used`` grew by ``high`` / 64 since the
    last sample (a busy event loop may run its timers late; publishes call :meth:`check` past ``check_at``). The
    alarm is on when ``used`` is over ``high``, or when ``rss`` is over ``high`` while messages account for at
    least half of the limit (``used`` > ``high`` / 2): memory that messages do not hold (heap fragmentation
    after a drain, code) cannot be freed by blocking publishers, so it alone does not keep them blocked."""

    def __init__(self, high: int) -> None:
        self.used = 0
        self.rss = 0
        self.track_rss = True  # False when the process is not the broker's alone (embedded): ``used`` only
        self.high = high if high > 0 else 2**62
        self.step = max(self.high // 64, 256 * 1024)
        self.next_sample = self.step  # sample the RSS again when ``used`` passes this
        self.check_at = min(self.high, self.next_sample)  # publishes call check() when ``used`` passes this
        self.alarm = False
        self.memory_alarm = False
        self.disk_alarm = False
        self.listeners: list[Callable[[bool], None]] = []

    @property
    def reason(self) -> str:
        return "low on memory" if self.memory_alarm else "low on disk"

    def sample(self) -> None:
        """Read the process's RSS and raise or clear the alarm."""
        self.rss = process_rss()
        self.next_sample = self.used + self.step
        self.check()

    def check(self) -> None:
        """Raise or clear the memory alarm after ``used`` (or ``rss``) changed (called on the slow path only)."""
        high = self.high
        used = self.used
        if used > self.next_sample and self.track_rss:
            self.rss = process_rss()
            self.next_sample = used + self.step
        self.check_at = min(high, self.next_sample) if self.track_rss else high
        memory_alarm = used > high or (self.rss > high and used > high // 2)
        if memory_alarm != self.memory_alarm:
            self.memory_alarm = memory_alarm
            log.warning("memory alarm %s: %d bytes of messages held, process RSS %d bytes, limit %d",
                        "set" if memory_alarm else "cleared", used, self.rss, high)
            self._update()

    def set_disk_alarm(self, on: bool, free: int, limit: int) -> None:
        if on != self.disk_alarm:
            self.disk_alarm = on
            log.warning("disk alarm %s: %d bytes free, limit %d", "set" if on else "cleared", free, limit)
            self._update()

    def _update(self) -> None:
        alarm = self.memory_alarm or self.disk_alarm
        if alarm != self.alarm:
            self.alarm = alarm
            for listener in list(self.listeners):
                listener(alarm)


class DefaultExchange(Exchange):
    """The nameless direct exchange every queue is bound to by its name. It cannot be bound or unbound."""

    type_name = "direct"

    def __init__(self, vhost: VHost) -> None:
        super().__init__("", durable=True)
        self.queues = vhost.queues
        self.reply_queues = vhost.broker.reply_queues

    def route(self, routing_key: str, headers: dict[str, Any] | None) -> tuple[Queue, ...]:
        queue = self.queues.get(routing_key)
        if queue is None:
            queue = self.reply_queues.get(routing_key) if routing_key.startswith(REPLY_TO) else None
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


class VHost:
    """A virtual host: the namespace of exchanges and queues."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.queues: dict[str, Queue] = {}
        self.exchanges: dict[str, Exchange] = {}
        self.policies: dict[str, Policy] = {}
        self.limits: dict[str, int] = {}  # max-connections, max-queues (leveret.core.access)
        self._policy_alternates: dict[str, str] = {}  # exchange -> alternate-exchange set by a policy
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
        exchange = create_exchange(type_name, name, durable=durable, auto_delete=auto_delete, internal=internal,
                                   arguments=arguments)
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
                      arguments: dict[str, Any] | None = None, access: Access | None = None) -> Queue:
        """``access`` as for :meth:`declare_exchange`: configure on the queue (its generated name for a
        server-named one); for a new queue with a dead-letter exchange, read on it and write on the DLX."""
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
        elif name.startswith("amq."):
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
        limit = reached(self.limits, "max-queues", len(self.queues))
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
        if queue.durable and self.broker.durability is not None:
            self.broker.durability.save_queue(queue)
        return queue

    def _enable_status(self, queue: Queue) -> None:
        queue.arguments[STATUS_ARGUMENT] = True
        queue.status = self.broker.status
        if queue.durable and self.broker.durability is not None:
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
        if queue.durable and self.broker.durability is not None:
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

    # --- routing -----------------------------------------------------------------------------------

    def route_all(self, exchange: Exchange, msg: Message) -> list[Queue] | tuple[Queue, ...]:
        """:meth:`route` plus sender-selected distribution (CC and BCC headers route with extra keys; BCC is
        removed from the message)."""
        if exchange.name in OBSERVED:  # leveret.events and amq.leveret.status: the status book (core/status.py)
            self.broker.status.observe(self, exchange, msg)
        header = msg.header
        queues: list[Queue] | tuple[Queue, ...]
        if msg.flags & 0x2000 and (b"\x02CC" in header or b"\x03BCC" in header):
            queues = self._route_keys(exchange, msg, routing_keys(msg))
            self._strip_bcc(msg)
        else:
            queues = self.route(exchange, msg)
        return queues

    def publish(self, exchange: Exchange, msg: Message) -> list[Queue] | tuple[Queue, ...]:
        """Route a message the broker makes itself (status replies, the aliveness test) and put it in every queue
        found, one copy per extra queue. Returns the queues."""
        queues = self.route_all(exchange, msg)
        first = True
        for queue in queues:
            queue.enqueue(msg if first else msg.copy())
            first = False
        return queues

    def _alternate_of(self, exchange: Exchange) -> Any:
        return exchange.arguments.get("alternate-exchange") or self._policy_alternates.get(exchange.name)

    def _alternate_exchange(self, exchange: Exchange) -> Exchange | None:
        """The exchange's alternate exchange (argument or policy), when it has one that exists."""
        if not (exchange.arguments or self._policy_alternates):
            return None
        name = self._alternate_of(exchange)
        return self.exchanges.get(name) if isinstance(name, str) else None

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

    def _route_keys(self, exchange: Exchange, msg: Message, keys: list[str]) -> list[Queue]:
        """:meth:`route` with several routing keys (the message's, CC, BCC; or dead-lettering's), as RabbitMQ:
        every exchange on the way, including those reached through exchange-to-exchange bindings and alternate
        exchanges, matches the message with all the keys; an exchange that none of them matches passes the
        message to its alternate exchange."""
        keys = list(dict.fromkeys(keys))
        if keys == [msg.routing_key]:
            return list(self.route(exchange, msg))
        return self._walk(exchange, self._targets(exchange, msg, keys) or (), msg, keys)

    @staticmethod
    def _strip_bcc(msg: Message) -> None:
        headers = msg.headers
        if headers is not None and "BCC" in headers:
            bcc = headers["BCC"]
            msg.bcc = [k for k in bcc if isinstance(k, str)] if isinstance(bcc, list) else None
            props = dict(msg.properties)
            props["headers"] = {k: v for k, v in headers.items() if k != "BCC"}
            msg.set_properties(props)

    def dead_letter(self, queue: Queue, msg: Message, reason: str) -> None:
        """Republish a message leaving ``queue`` for ``reason`` to the queue's dead-letter exchange, with
        RabbitMQ's x-death header; a missing exchange or a fully automatic cycle drops it."""
        settings = queue.settings
        exchange = self.exchanges.get(settings.dead_letter_exchange or "")
        if exchange is None:
            return
        copy, keys = dead_letter_copy(msg, queue.name, reason, exchange.name, settings.dead_letter_routing_key,
                                      self.broker.timers.now())
        targets = self._route_keys(exchange, copy, keys)
        if not targets:
            targets = list(self.route_all(exchange, copy))
        if reason != "rejected":
            deaths = copy.properties["headers"]["x-death"]
            targets = [q for q in targets if not is_cycle(q.name, deaths)]
        if msg.flags & MESSAGE_ID and self.broker.tracker is not None:
            self.broker.tracker.record(self.name, msg, "dead_lettered", queue.name, reason, exchange.name,
                                       tuple([q.name for q in targets]))
        first = True
        for target in targets:
            target.enqueue(copy if first else copy.copy())
            first = False

    def route(self, exchange: Exchange, msg: Message) -> list[Queue] | tuple[Queue, ...]:
        """The queues ``msg`` goes to through ``exchange`` and any exchanges bound to it, each once. An
        x-delayed-message exchange that holds ``msg`` until it is due (``broker.delays``) routes it nowhere now.

        Alternate exchanges as RabbitMQ's: each exchange on the way (the one published to, or one reached
        through an exchange-to-exchange binding or as an alternate) whose own bindings match nothing passes the
        message to its ``alternate-exchange``; an exchange that routes to another exchange has matched."""
        found = self._targets(exchange, msg, None)
        if not found:
            return ()
        if len(found) == 1:
            (only,) = found
            if type(only) is Queue:
                return (only,)
        return self._walk(exchange, found, msg, None)

    def _targets(self, exchange: Exchange, msg: Message, keys: list[str] | None) -> Collection[Any] | None:
        """What ``exchange`` itself routes ``msg`` to (queues and exchanges) with ``keys`` (None: the message's
        routing key), or its alternate exchange when nothing matches; None when a delayed exchange holds it."""
        kind = exchange.type_name
        if kind == "x-delayed-message":
            if self.broker.delays.hold(self, exchange, msg):
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


@dataclass
class User:
    name: str
    password_hash: str
    tags: tuple[str, ...] = ()
    permissions: dict[str, Permission] = field(default_factory=dict)  # vhost -> patterns
    limits: dict[str, int] = field(default_factory=dict)  # max-connections, max-channels
    version: int = 0  # bumped by every change of ``permissions`` (sessions' publish checks rely on it)

    @property
    def vhosts(self) -> Any:
        """The names of the vhosts the user has permissions in (a live view)."""
        return self.permissions.keys()


class Session:
    """One client connection as the core sees it: user, vhost, channels, exclusive queues."""

    def __init__(self, broker: Broker, sink: Sink, peer: str = "") -> None:
        self.broker = broker
        self.sink = sink
        self.peer = peer
        self.user: User | None = None
        self._vhost: VHost | None = None
        self.access: Access | None = None  # the user's permissions in the vhost, once it is open
        self.channels: dict[int, Channel] = {}
        self.exclusive_queues: list[Queue] = []
        self.writable = True
        self.cancel_notify = False
        self._confirming: list[Channel] = []
        self._after_durable: list[Callable[[BaseException | None], None]] = []
        # what the edge knows of the connection beyond the peer's address (TLS, auth mechanism), for the management API
        self.details: dict[str, Any] = {}

    @property
    def vhost(self) -> VHost:
        if self._vhost is None:
            raise NotAllowed("no vhost opened")
        return self._vhost

    def open_vhost(self, name: str) -> VHost:
        """connection.open: RabbitMQ's checks in its order (vhost connection limit, user connection limit,
        vhost access), then the connection counts against both limits until :meth:`close`."""
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise NotAllowed(f"vhost {name} not found")
        user = self.user.name if self.user else "?"
        limit = reached(vhost.limits, "max-connections", self.broker.vhost_connections.get(name, 0))
        if limit is not None:
            raise NotAllowed(f"access to vhost '{name}' refused for user '{user}': connection limit ({limit}) is "
                             "reached")
        if self.user is not None:
            limit = reached(self.user.limits, "max-connections", self.broker.user_connections.get(user, 0))
            if limit is not None:
                raise NotAllowed(f"connection refused for user '{user}': user connection limit ({limit}) is reached")
        if self.user is None or name not in self.user.permissions:
            raise NotAllowed(f"access to vhost '{name}' refused for user '{user}'")
        self._vhost = vhost
        self.access = Access(self.user, name)
        self.broker.session_opened(self)
        return vhost

    def open_channel(self, number: int) -> Channel:
        user = self.user
        if user is not None:
            limit = reached(user.limits, "max-channels", self.broker.user_channels.get(user.name, 0))
            if limit is not None:
                raise NotAllowed(f"number of channels opened for user '{user.name}' has reached the maximum "
                                 f"allowed user limit of ({limit})")
            self.broker.user_channels[user.name] = self.broker.user_channels.get(user.name, 0) + 1
        channel = Channel(self, number)
        self.channels[number] = channel
        return channel

    def close_channel(self, number: int) -> None:
        channel = self.channels.pop(number, None)
        if channel is not None:
            if self.user is not None:
                self.broker.count_down(self.broker.user_channels, self.user.name)
            channel.close()

    def set_writable(self, writable: bool) -> None:
        if writable == self.writable:
            return
        self.writable = writable
        for channel in list(self.channels.values()):
            channel.set_writable(writable)

    def confirm_pending(self, channel: Channel) -> None:
        if not self._confirming or self._confirming[-1] is not channel:
            self._confirming.append(channel)

    def after_durable(self, callback: Callable[[BaseException | None], None]) -> None:
        """Run ``callback`` once everything done so far is on disk (at the next :meth:`flush`)."""
        self._after_durable.append(callback)

    def flush(self) -> None:
        """End of a batch of client input: write what it changed and send its confirms (and other replies
        that promise durability) once that is durable: at once when nothing needs writing."""
        after: list[Callable[[BaseException | None], None]] = []
        if self._confirming:
            confirming, self._confirming = self._confirming, []
            for channel in confirming:
                due = channel.confirms_due()
                if due is not None:
                    after.append(due)
        if self._after_durable:
            after.extend(self._after_durable)
            self._after_durable = []
        durability = self.broker.durability
        if durability is None:
            for callback in after:
                callback(None)
        elif after or durability.ops:
            durability.commit(after)

    def force_close(self, reason: str) -> None:
        """Close this client connection on an operator's request (management API, ``leveret ctl``) or because its
        user or vhost was deleted: the protocol adapter tells the client why (AMQP: 320 CONNECTION_FORCED) and
        the session then closes."""
        self.sink.force_close(reason)

    def close(self) -> None:
        """The connection is gone: close its channels and delete its exclusive queues."""
        for number in list(self.channels):
            self.close_channel(number)
        for queue in list(self.exclusive_queues):
            queue.vhost.remove_queue(queue)
        self.broker.session_closed(self)


class Broker:
    """The whole broker: vhosts, users, the memory monitor and, when it has a store, its durability.

    With a ``store`` the broker's state is recovered from it at construction (defaults are created only on
    a first start) and every durable change is written to it; ``dispatch`` runs a callback on the broker's
    thread (the event loop's ``call_soon_threadsafe``)."""

    def __init__(self, *, memory_high_watermark: int = 0, default_user: str = "guest",
                 default_pass: str = "guest", default_vhost: str = "/",
                 loopback_users: tuple[str, ...] = ("guest",), store: Store | None = None,
                 dispatch: Callable[..., Any] | None = None, queue_memory_budget: int = 16_000_000,
                 queue_memory_window: int = 2048,
                 timers: Timers | None = None, audit: _audit.AuditLog | None = None,
                 tracking_window: float = 0, tracking_max_events: int = 0) -> None:
        self.audit = audit or _audit.AuditLog()
        self.memory = MemoryMonitor(memory_high_watermark)
        self.timers: Timers = timers or SystemTimers()
        self.tracker = (Tracker(tracking_window, tracking_max_events)
                        if tracking_window > 0 and tracking_max_events > 0 else None)
        self.queue_memory_budget = queue_memory_budget
        self.queue_memory_window = queue_memory_window
        self.reply_queues: dict[str, Queue] = {}
        self.vhosts: dict[str, VHost] = {}
        self.users: dict[str, User] = {}
        self.loopback_users = set(loopback_users)
        self.node_name = f"leveret@{os.uname().nodename}"
        self.durability = Durability(store, dispatch or (lambda fn, *args: fn(*args))) if store else None
        if self.durability is not None:
            self.durability.alarms = self.memory
        self.delays = DelayedMessages(self)
        self.status = StatusBook(self)  # task status records (core/status.py); before recovery makes queues
        self.sessions: set[Session] = set()  # connections past connection.open
        self.vhost_connections: dict[str, int] = {}
        self.user_connections: dict[str, int] = {}
        self.user_channels: dict[str, int] = {}
        self.recovered_queues = 0
        self.recovered_messages = 0
        if store is None or not self._recover(store):
            self.add_vhost(default_vhost)
            if default_user:
                self.add_user(default_user, default_pass, ("administrator",), vhosts={default_vhost})

    # --- connections (for limits and forced closes) ------------------------------------------------

    def session_opened(self, session: Session) -> None:
        if session in self.sessions or session.user is None:
            return
        self.sessions.add(session)
        vhost = session.vhost.name
        self.vhost_connections[vhost] = self.vhost_connections.get(vhost, 0) + 1
        self.user_connections[session.user.name] = self.user_connections.get(session.user.name, 0) + 1

    def session_closed(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.count_down(self.vhost_connections, session.vhost.name)
        if session.user is not None:
            self.count_down(self.user_connections, session.user.name)

    @staticmethod
    def count_down(counts: dict[str, int], key: str) -> None:
        left = counts.get(key, 0) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)

    def _force_close(self, sessions: list[Session], reason: str) -> None:
        for session in sessions:
            session.force_close(reason)

    # --- vhosts, users, permissions, limits --------------------------------------------------------

    def _audited(self) -> bool:
        return self.durability is None or not self.durability.recovering

    def add_vhost(self, name: str) -> VHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VHost(self, name)
            if self.durability is not None and not self.durability.recovering:
                self.durability.store.save_vhost(name)
            if self._audited():
                self.audit.record("vhost.created", vhost=name)
        return vhost

    def add_user(self, name: str, password: str, tags: tuple[str, ...] = (), vhosts: set[str] | None = None) -> User:
        user = User(name, hash_password(password), tags, {vhost: Permission() for vhost in vhosts or ()})
        self.users[name] = user
        if self.durability is not None:
            store = self.durability.store
            store.save_user(UserDef(name, user.password_hash, tags))
            for vhost in user.vhosts:
                store.save_permission(PermissionDef(name, vhost))
        self.audit.record("user.created", user=name, tags=list(tags))
        for vhost in user.vhosts:
            self.audit.record("permission.set", user=name, vhost=vhost, configure=".*", write=".*", read=".*")
        return user

    def put_user(self, name: str, password_hash: str, tags: tuple[str, ...] = ()) -> tuple[User, bool]:
        """Create a user or replace its password hash and tags (management API, definitions import).
        ``password_hash`` is in RabbitMQ's sha256 format; "" means no password login. Returns (user, created)."""
        user = self.users.get(name)
        created = user is None
        if user is None:
            user = self.users[name] = User(name, password_hash, tuple(tags))
            changed_password = True
        else:
            changed_password = user.password_hash != password_hash
            user.password_hash = password_hash
            user.tags = tuple(tags)
        if self.durability is not None and not self.durability.recovering:
            self.durability.store.save_user(UserDef(name, password_hash, tuple(tags)))
        if self._audited():
            self.audit.record("user.created" if created else "user.updated", user=name, tags=list(tags),
                              password_changed=changed_password)
        return user, created

    def delete_user(self, name: str) -> None:
        """Delete a user; its open connections are closed (320, as RabbitMQ does)."""
        user = self.users.get(name)
        if user is None:
            raise NotFound(f"no user '{name}'")
        del self.users[name]
        user.permissions.clear()  # anything its connections still try is refused
        user.version += 1
        if self.durability is not None:
            self.durability.store.delete_user(name)
        self.audit.record("user.deleted", user=name)
        self._force_close([s for s in self.sessions if s.user is user], f"user '{name}' is deleted")

    def set_permission(self, user_name: str, vhost_name: str, configure: str = ".*", write: str = ".*",
                       read: str = ".*") -> bool:
        """Set a user's configure/write/read patterns in a vhost. Returns True when it had none before.
        Open connections are not closed: their next operation is checked against the new patterns.
        Raises NotFound (user, vhost) and PreconditionFailed (a pattern that is not a regular expression)."""
        user = self.users.get(user_name)
        if user is None:
            raise NotFound(f"no user '{user_name}'")
        if vhost_name not in self.vhosts:
            raise NotFound(f"no vhost '{vhost_name}'")
        permission = Permission(configure, write, read)
        created = vhost_name not in user.permissions
        user.permissions[vhost_name] = permission
        user.version += 1
        if self.durability is not None and not self.durability.recovering:
            self.durability.store.save_permission(PermissionDef(user_name, vhost_name, configure, write, read))
        if self._audited():
            self.audit.record("permission.set", user=user_name, vhost=vhost_name, configure=configure, write=write,
                              read=read)
        return created

    def clear_permission(self, user_name: str, vhost_name: str) -> None:
        user = self.users.get(user_name)
        if user is None or vhost_name not in user.permissions:
            raise NotFound(f"no permissions for user '{user_name}' in vhost '{vhost_name}'")
        del user.permissions[vhost_name]
        user.version += 1
        if self.durability is not None:
            self.durability.store.delete_permission(user_name, vhost_name)
        self.audit.record("permission.cleared", user=user_name, vhost=vhost_name)

    def set_vhost_limits(self, vhost_name: str, limits: dict[str, Any], *, replace: bool = True) -> dict[str, int]:
        """Set a vhost's limits (``replace``: the whole set, as rabbitmqctl set_vhost_limits; otherwise
        merged, as PUT /api/vhost-limits/{vhost}/{name}). Returns the limits now in force."""
        vhost = self.vhosts.get(vhost_name)
        if vhost is None:
            raise NotFound(f"no vhost '{vhost_name}'")
        checked = validate_limits(limits, VHOST_LIMITS, f"vhost '{vhost_name}'")
        vhost.limits = checked if replace else {**vhost.limits, **checked}
        self._save_limits("vhost", vhost_name, vhost.limits)
        return vhost.limits

    def clear_vhost_limits(self, vhost_name: str, name: str | None = None) -> None:
        """Clear one limit of a vhost, or all of them (``name`` None)."""
        vhost = self.vhosts.get(vhost_name)
        if vhost is None:
            raise NotFound(f"no vhost '{vhost_name}'")
        vhost.limits = {} if name is None else {k: v for k, v in vhost.limits.items() if k != name}
        self._save_limits("vhost", vhost_name, vhost.limits)

    def set_user_limits(self, user_name: str, limits: dict[str, Any], *, replace: bool = False) -> dict[str, int]:
        """Set a user's limits, merged with those it has (as rabbitmqctl set_user_limits) unless ``replace``."""
        user = self.users.get(user_name)
        if user is None:
            raise NotFound(f"no user '{user_name}'")
        checked = validate_limits(limits, USER_LIMITS, f"user '{user_name}'")
        user.limits = checked if replace else {**user.limits, **checked}
        self._save_limits("user", user_name, user.limits)
        return user.limits

    def clear_user_limits(self, user_name: str, name: str | None = None) -> None:
        user = self.users.get(user_name)
        if user is None:
            raise NotFound(f"no user '{user_name}'")
        user.limits = {} if name is None else {k: v for k, v in user.limits.items() if k != name}
        self._save_limits("user", user_name, user.limits)

    def _save_limits(self, kind: str, name: str, limits: dict[str, int]) -> None:
        if self.durability is not None and not self.durability.recovering:
            self.durability.store.save_limits(kind, name, dict(limits))
        if self._audited():
            subject: dict[str, Any] = {kind: name, "limits": limits}
            self.audit.record(f"{kind}_limits.{'set' if limits else 'cleared'}", **subject)

    def delete_vhost(self, name: str) -> None:
        """Delete a vhost with its queues (their consumers are cancelled), exchanges, policies and
        permissions."""
        vhost = self.vhosts.get(name)
        if vhost is None:
            raise NotFound(f"no vhost '{name}'")
        self.audit.record("vhost.deleted", vhost=name)
        self._force_close([s for s in self.sessions if s._vhost is vhost], f"vhost '{name}' is deleted")
        for queue in list(vhost.queues.values()):
            vhost.remove_queue(queue)
        del self.vhosts[name]
        self.status.forget_vhost(name)
        for user in self.users.values():
            if user.permissions.pop(name, None) is not None:
                user.version += 1
        if self.durability is not None:
            self.durability.flush()
            for policy_name in vhost.policies:
                self.durability.store.delete_policy(name, policy_name)
            self.durability.store.delete_vhost(name)

    def set_policy(self, policy: Policy) -> None:
        """Add or replace a policy and apply it at once. Raises NotFound (vhost), PreconditionFailed (policy)."""
        vhost = self.vhosts.get(policy.vhost)
        if vhost is None:
            raise NotFound(f"no vhost '{policy.vhost}'")
        validate_policy(policy)
        vhost.policies[policy.name] = policy
        if self.durability is not None and not self.durability.recovering:
            self.durability.store.save_policy(PolicyDef(policy.vhost, policy.name, policy.pattern,
                                                        dict(policy.definition), policy.priority, policy.apply_to))
        if self._audited():
            self.audit.record("policy.set", vhost=policy.vhost, name=policy.name, pattern=policy.pattern,
                              apply_to=policy.apply_to, priority=policy.priority, definition=policy.definition)
        vhost.apply_policies()

    def clear_policy(self, vhost_name: str, name: str) -> None:
        vhost = self.vhosts.get(vhost_name)
        if vhost is None or name not in vhost.policies:
            raise NotFound(f"no policy '{name}' in vhost '{vhost_name}'")
        del vhost.policies[name]
        if self.durability is not None:
            self.durability.store.delete_policy(vhost_name, name)
        self.audit.record("policy.cleared", vhost=vhost_name, name=name)
        vhost.apply_policies()

    def authenticate(self, username: str, password: str, loopback: bool) -> User:
        """The user with these credentials; AccessRefused otherwise (and for loopback-only users elsewhere)."""
        if not password:  # as RabbitMQ's internal backend: a blank password never logs in
            raise AccessRefused(f"user '{username}' attempted to log in with a blank password, which is "
                                "prohibited")
        user = self.users.get(username)
        if user is None or not check_password(password, user.password_hash):
            raise AccessRefused(f"user '{username}' - invalid credentials")
        if username in self.loopback_users and not loopback:
            raise AccessRefused(f"user '{username}' can only connect via localhost")
        return user

    def authenticate_certificate(self, username: str, loopback: bool) -> User:
        """The user a verified TLS client certificate names (SASL EXTERNAL): no password is checked, but the
        user must exist and loopback-only users must still come from loopback."""
        user = self.users.get(username)
        if user is None:
            raise AccessRefused(f"user '{username}' (from the client certificate) does not exist")
        if username in self.loopback_users and not loopback:
            raise AccessRefused(f"user '{username}' can only connect via localhost")
        return user

    def _recover(self, store: Store) -> bool:
        """Rebuild the broker from its store (core/recovery.py). False when the store is new."""
        from .recovery import recover

        return recover(self)


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
