"""Message lifecycle features of queues, as RabbitMQ has them: settings from queue arguments (and policies),
priority ordering, and dead-lettering (the ``x-death`` header).

:class:`QueueSettings` is what a queue does beyond plain FIFO; a queue with none of them keeps the fast path.
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from leveret.amqp.codec import LongInt

from .errors import PreconditionFailed
from .message import Message, build_address, build_header

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


def _erlang(value: Any) -> str:
    if isinstance(value, str):
        return f'<<"{value}">>'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bytes):
        return "binary"
    return "void" if value is None else type(value).__name__


def _invalid(arg: str, queue: str, vhost: str, reason: str) -> PreconditionFailed:
    return PreconditionFailed(f"invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {reason}")


def _int_arg(args: dict[str, Any], key: str, queue: str, vhost: str, *, zero: bool = True,
             high: int | None = None) -> int | None:
    if key not in args:
        return None
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(key, queue, vhost, f"{{unacceptable_type,{_type_of(value)}}}")
    if value < 0:
        raise _invalid(key, queue, vhost, f"{{value_negative,{value}}}")
    if value == 0 and not zero:
        raise _invalid(key, queue, vhost, f"{{value_zero,{value}}}")
    if high is not None and value > high:
        raise _invalid(key, queue, vhost, f"{{value_too_large,{value},{high}}}")
    return value


def parse_settings(args: dict[str, Any], queue: str, vhost: str) -> QueueSettings:
    """The settings in a queue's (effective) arguments. Raises PreconditionFailed with RabbitMQ's texts."""
    if not any(key.startswith("x-") for key in args):
        return _PLAIN
    ttl = _int_arg(args, "x-message-ttl", queue, vhost, high=2**32 - 1)
    expires = _int_arg(args, "x-expires", queue, vhost, zero=False, high=2**32 - 1)
    max_length = _int_arg(args, "x-max-length", queue, vhost)
    max_bytes = _int_arg(args, "x-max-length-bytes", queue, vhost)
    delivery_limit = _int_arg(args, "x-delivery-limit", queue, vhost)
    max_priority = None
    if "x-max-priority" in args:
        value = args["x-max-priority"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid("x-max-priority", queue, vhost, f"{{unacceptable_type,{_type_of(value)}}}")
        if value < 0:
            raise _invalid("x-max-priority", queue, vhost, f"{{value_negative,{value}}}")
        if value > 255:
            raise _invalid("x-max-priority", queue, vhost, f"{{value_too_large,{value},255}}")
        max_priority = value or None
    dlx = args.get("x-dead-letter-exchange")
    if dlx is not None and not isinstance(dlx, str):
        raise _invalid("x-dead-letter-exchange", queue, vhost, f"{{unacceptable_type,{_type_of(dlx)}}}")
    dlrk = args.get("x-dead-letter-routing-key")
    if dlrk is not None:
        if not isinstance(dlrk, str):
            raise _invalid("x-dead-letter-routing-key", queue, vhost, f"{{unacceptable_type,{_type_of(dlrk)}}}")
        if dlx is None:
            raise _invalid("x-dead-letter-routing-key", queue, vhost,
                           "Key 'x-dead-letter-exchange' must be present")
    overflow = args.get("x-overflow", "drop-head")
    if not isinstance(overflow, str):
        raise _invalid("x-overflow", queue, vhost, f"{{unacceptable_type,{_type_of(overflow)}}}")
    if overflow not in OVERFLOW_MODES:
        raise _invalid("x-overflow", queue, vhost, f"{{invalid_value,{_erlang(overflow)}}}")
    sac = args.get("x-single-active-consumer", False)
    if not isinstance(sac, bool):
        raise _invalid("x-single-active-consumer", queue, vhost, f"{{unacceptable_type,{_type_of(sac)}}}")
    retry = args.get("x-retry-intervals")
    intervals: tuple[int, ...] | None = None
    if retry is not None:
        if not isinstance(retry, list) or not retry or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in retry):
            raise _invalid("x-retry-intervals", queue, vhost,
                           "expected a non-empty array of non-negative integers (milliseconds)")
        intervals = tuple(retry)
    return QueueSettings(message_ttl=ttl, expires=expires, dead_letter_exchange=dlx, dead_letter_routing_key=dlrk,
                         max_length=max_length, max_length_bytes=max_bytes, overflow=overflow,
                         max_priority=max_priority, single_active_consumer=sac, delivery_limit=delivery_limit,
                         retry_intervals=intervals)


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


# --- dead-lettering ----------------------------------------------------------------------------------


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


def dead_letter_copy(msg: Message, queue_name: str, reason: str, exchange: str, routing_key: str | None,
                     now: float) -> tuple[Message, list[str]]:
    """The message as it is dead-lettered from ``queue_name`` for ``reason``, with RabbitMQ's ``x-death``
    header, published to ``exchange``; and the routing keys to route it with."""
    props = dict(msg.properties)
    headers = dict(props.get("headers") or {})
    keys = [msg.routing_key]
    cc = headers.get("CC")
    if isinstance(cc, list):
        keys.extend(k for k in cc if isinstance(k, str))
    entry: dict[str, Any] = {
        "count": LongInt(1),
        "reason": reason,
        "queue": queue_name,
        "time": datetime.datetime.fromtimestamp(int(now), datetime.UTC),
        "exchange": msg.exchange,
        "routing-keys": list(keys),
    }
    expiration = props.pop("expiration", None)
    if expiration is not None and reason == "expired":
        entry["original-expiration"] = expiration
    deaths = headers.get("x-death")
    if isinstance(deaths, list):
        for index, old in enumerate(deaths):
            if isinstance(old, dict) and old.get("queue") == queue_name and old.get("reason") == reason:
                updated = dict(old)
                count = updated.get("count")
                updated["count"] = LongInt((count if isinstance(count, int) else 0) + 1)
                deaths = [updated, *deaths[:index], *deaths[index + 1 :]]
                break
        else:
            deaths = [entry, *deaths]
    else:
        deaths = [entry]
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", queue_name)
        headers.setdefault("x-first-death-exchange", msg.exchange)
    headers["x-death"] = deaths
    props["headers"] = headers
    body = msg.body
    new_key = routing_key if routing_key is not None else msg.routing_key
    copy = Message(exchange, new_key, build_address(exchange, new_key), build_header(props, len(body)), body)
    copy._props = props
    return copy, ([routing_key] if routing_key is not None else keys)


def is_cycle(queue_name: str, deaths: list[Any]) -> bool:
    """RabbitMQ's rabbit_dead_letter:is_cycle: dead-lettering into ``queue_name`` again would close a loop
    with no rejection in it (so the message would circulate for ever)."""
    for index, death in enumerate(deaths):
        if isinstance(death, dict) and death.get("queue") == queue_name:
            return all(isinstance(d, dict) and d.get("reason") != "rejected" for d in deaths[: index + 1])
    return False
