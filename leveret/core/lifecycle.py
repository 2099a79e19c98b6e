"""Message lifecycle features of queues, as RabbitMQ has them: settings from queue arguments (and policies),
priority ordering, and dead-lettering (the ``x-death`` header).

:class:`QueueSettings` is what a queue does beyond plain FIFO; a queue with none of them keeps the fast path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from leveret.amqp.codec import LongInt, field_type

from .errors import PreconditionFailed
from .message import Message

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")


@dataclass(frozen=True)
class QueueSettings:
    """The lifecycle settings of a queue (all optional). Times in milliseconds."""

    message_ttl: int | None = None
    expires: int | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    max_priority: int | None = None
    single_active_consumer: bool = False
    delivery_limit: int | None = None
    retry_intervals: tuple[int, ...] | None = None
    quorum: bool = False  # x-queue-type quorum: deliveries carry x-delivery-count, a delivery limit by default

    @property
    def active(self) -> bool:
        """True when the queue needs the lifecycle path at all."""
        return self != _PLAIN

    @property
    def limited(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None


_PLAIN = QueueSettings()

# Which policy keys map to which queue arguments, and which of the two wins when both are set: for these,
# RabbitMQ takes the smaller value; for the others the queue's own argument wins.
POLICY_KEYS = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "delivery-limit": "x-delivery-limit",
    "retry-intervals": "x-retry-intervals",
}
MIN_WINS = frozenset({"x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes", "x-delivery-limit"})


MAX_TTL = 315_360_000_000  # ten years in milliseconds: RabbitMQ's limit for TTLs and expiries

QUEUE_TYPES = ("classic", "quorum")
QUORUM_DELIVERY_LIMIT = 20  # RabbitMQ 4.0's default for quorum queues (3.x had none)
# Classic-queue features a quorum queue refuses, in RabbitMQ 3.10's words ("of queue type rabbit_quorum_queue")
QUORUM_INVALID_ARGS = ("x-max-priority", "x-queue-mode", "x-queue-version", "x-queue-master-locator")


def queue_type(arguments: dict[str, Any]) -> str:
    """The queue's type as the management API reports it: ``classic`` or ``quorum``."""
    value = arguments.get("x-queue-type")
    return value if value in QUEUE_TYPES else "classic"


def check_queue_type(arguments: dict[str, Any], name: str, vhost: str, *, durable: bool, exclusive: bool,
                     auto_delete: bool) -> None:
    """A new queue's ``x-queue-type`` and what it requires, with RabbitMQ 3.10's texts and order: the type
    itself, then (quorum) the classic-only arguments, auto-delete, exclusive, non-durable. Streams are refused:
    Leveret has none. Raises PreconditionFailed."""
    kind = arguments.get("x-queue-type")
    if kind is None or kind == "classic":
        return
    where = f"for queue '{name}' in vhost '{vhost}'"
    if not isinstance(kind, str):
        raise PreconditionFailed(f"invalid arg 'x-queue-type' {where}: {{unacceptable_type,{field_type(kind)}}}")
    if kind == "stream":
        raise PreconditionFailed(f"invalid arg 'x-queue-type' {where}: streams are not supported by Leveret")
    if kind != "quorum":
        raise PreconditionFailed(f"invalid arg 'x-queue-type' {where}: \"unsupported queue type '{kind}'\"")
    for key in QUORUM_INVALID_ARGS:
        if key in arguments:
            raise PreconditionFailed(f"invalid arg '{key}' {where} of queue type rabbit_quorum_queue")
    for invalid, prop in ((auto_delete, "auto-delete"), (exclusive, "exclusive-owner"), (not durable, "non-durable")):
        if invalid:
            raise PreconditionFailed(f"invalid property '{prop}' {where}")


class _Invalid(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _integer(value: Any, *, zero: bool = True, high: int | None = None, exceeded: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f'"expected integer, got {field_type(value)}"')
    if value < 0:
        raise _Invalid(f"{{value_negative,{value}}}")
    if value == 0 and not zero:
        raise _Invalid(f"{{value_zero,{value}}}")
    if high is not None and value > high:
        raise _Invalid(f"{{max_value_exceeded,{value}}}" if exceeded else f"{{value_too_large,{value}}}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{{unacceptable_type,{field_type(value)}}}")
    return value


def parse_settings(args: dict[str, Any], queue: str, vhost: str) -> QueueSettings:
    """The settings in a queue's (effective) arguments. Raises PreconditionFailed with RabbitMQ's texts for
    the first invalid argument."""
    if not any(key.startswith("x-") for key in args):
        return _PLAIN
    values: dict[str, Any] = {}
    quorum = args.get("x-queue-type") == "quorum"
    if quorum:
        values["quorum"] = True
        values["delivery_limit"] = QUORUM_DELIVERY_LIMIT
    for key, value in args.items():
        try:
            if key == "x-message-ttl":
                values["message_ttl"] = _integer(value, high=MAX_TTL)
            elif key == "x-expires":
                values["expires"] = _integer(value, zero=False, high=MAX_TTL)
            elif key == "x-max-length":
                values["max_length"] = _integer(value)
            elif key == "x-max-length-bytes":
                values["max_length_bytes"] = _integer(value)
            elif key == "x-delivery-limit":
                if quorum and isinstance(value, int) and not isinstance(value, bool) and value < 0:
                    values["delivery_limit"] = None  # RabbitMQ 4: a negative limit means none
                else:
                    values["delivery_limit"] = _integer(value)
            elif key == "x-max-priority":
                values["max_priority"] = _integer(value, high=255, exceeded=True) or None
            elif key == "x-overflow":
                if _string(value) not in OVERFLOW_MODES:
                    raise _Invalid("invalid_overflow")
                values["overflow"] = value
            elif key == "x-dead-letter-exchange":
                if not isinstance(value, str):
                    raise PreconditionFailed(f"invalid type '{field_type(value)}' for arg 'x-dead-letter-exchange' "
                                             f"in queue '{queue}' in vhost '{vhost}'")
                values["dead_letter_exchange"] = value
            elif key == "x-dead-letter-routing-key":
                values["dead_letter_routing_key"] = _string(value)
                if "x-dead-letter-exchange" not in args:
                    raise _Invalid("routing_key_but_no_dlx_defined")
            elif key == "x-dead-letter-strategy":
                if value not in ("at-most-once", "at-least-once"):
                    raise _Invalid("invalid_dlx_strategy")
            elif key == "x-single-active-consumer":
                if not isinstance(value, bool):
                    raise _Invalid(f"{{unacceptable_type,{field_type(value)}}}")
                values["single_active_consumer"] = value
            elif key == "x-retry-intervals":
                if not isinstance(value, list) or not value or not all(
                        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TTL for v in value):
                    raise _Invalid("expected a non-empty array of delays in milliseconds")
                values["retry_intervals"] = tuple(value)
        except _Invalid as exc:
            raise PreconditionFailed(f"invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': "
                                     f"{exc.reason}") from None
    return QueueSettings(**values)


def merge_policy(arguments: dict[str, Any], definition: dict[str, Any] | None) -> dict[str, Any]:
    """A queue's effective arguments: its own, with a policy's definition filling in (and, for limits and
    times, the smaller of the two winning, as RabbitMQ does)."""
    if not definition:
        return arguments
    merged = dict(arguments)
    for key, value in definition.items():
        arg = POLICY_KEYS.get(key)
        if arg is None:
            continue
        if arg not in merged:
            merged[arg] = value
        elif arg in MIN_WINS and isinstance(value, int) and isinstance(merged[arg], int):
            merged[arg] = min(value, merged[arg])
    return merged


# --- priority ordering -------------------------------------------------------------------------------


class PriorityMessages:
    """Ready messages of a priority queue: one FIFO per priority level, the highest level first.

    Offers the part of deque's interface a Queue uses: append, popleft, [0], len, iteration (in delivery
    order), clear; and ``reinsert`` for a requeued message (back to its position within its level)."""

    def __init__(self, max_priority: int) -> None:
        self.max_priority = max_priority
        self.levels: list[deque[Message]] = [deque() for _ in range(max_priority + 1)]
        self._count = 0

    def level_of(self, msg: Message) -> int:
        if not msg.flags & 0x0800:
            return 0
        priority = msg.properties.get("priority") or 0
        return min(int(priority), self.max_priority)

    def append(self, msg: Message) -> None:
        self.levels[self.level_of(msg)].append(msg)
        self._count += 1

    def _top(self) -> deque[Message]:
        for level in reversed(self.levels):
            if level:
                return level
        raise IndexError("pop from an empty queue")

    def popleft(self) -> Message:
        msg = self._top().popleft()
        self._count -= 1
        return msg

    def __getitem__(self, index: int) -> Message:
        if index != 0:
            raise IndexError("only the head of a priority queue can be read")
        return self._top()[0]

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Message]:
        for level in reversed(self.levels):
            yield from level

    def clear(self) -> None:
        for level in self.levels:
            level.clear()
        self._count = 0

    def heads(self) -> Iterator[tuple[deque[Message], Message]]:
        for level in self.levels:
            if level:
                yield level, level[0]

    def reinsert(self, msg: Message) -> None:
        level = self.levels[self.level_of(msg)]
        self._count += 1
        if not level or msg.seq < level[0].seq:
            level.appendleft(msg)
            return
        index = len(level)
        while index and level[index - 1].seq > msg.seq:
            index -= 1
        level.insert(index, msg)


def count_delivery(msg: Message) -> None:
    """A quorum queue's delivery (after ``msg.delivery_count`` was counted up) carries ``x-delivery-count``: how
    many times it was delivered before, 0 the first time, as a 64-bit field (RabbitMQ 3.10's header)."""
    props = dict(msg.properties)
    headers = dict(props.get("headers") or {})
    headers["x-delivery-count"] = LongInt(msg.delivery_count - 1)
    props["headers"] = headers
    msg.set_properties(props)
