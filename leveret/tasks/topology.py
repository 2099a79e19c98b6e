"""Names, queue arguments and declarations shared by producers and workers (re-exported by leveret.tasks.app).

A work queue ``Q`` comes with ``Q.dead`` (its dead letters), on RabbitMQ with wait queues ``Q.retry.<ms>``
(delays and retries), on Leveret with a binding from the delayed exchange ``leveret.delayed``. Events go to the
topic exchange ``leveret.events``, revocations to the fanout exchange ``leveret.control``.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import aio_pika

from leveret.aioconnect import server_product as server_product  # re-exported (the task layer's name)

EVENTS_EXCHANGE = "leveret.events"
CONTROL_EXCHANGE = "leveret.control"
DELAYED_EXCHANGE = "leveret.delayed"
STATUS_EXCHANGE = "amq.leveret.status"  # Leveret's status book (query exchange)
STATUS_STREAM = "leveret.status"  # the fallback elsewhere: one stream of every event
REPLY_TO = "amq.rabbitmq.reply-to"
MAX_PRIORITY = 10


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def wait_queue(queue: str, ms: int) -> str:
    return f"{queue}.retry.{ms}"


def dead_queue(queue: str) -> str:
    return f"{queue}.dead"


async def declare_topology(channel: aio_pika.abc.AbstractChannel, app: Any, queue: str, product: str) -> None:
    """Declare what a work queue needs (the same from producers and workers): the events exchange, the dead
    letter queue, the queue itself with ``app.queue_arguments``, and on Leveret its delayed-exchange binding."""
    await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    await channel.declare_queue(dead_queue(queue), durable=True)
    await channel.declare_queue(queue, durable=True, arguments=app.queue_arguments(queue, product))
    if product == "Leveret":
        exchange = await channel.declare_exchange(DELAYED_EXCHANGE, "x-delayed-message", durable=True,
                                                  arguments={"x-delayed-type": "direct"})
        q = await channel.get_queue(queue, ensure=False)
        await q.bind(exchange, routing_key=queue)


async def publish_to_queue(channel: aio_pika.abc.AbstractChannel, queue: str, message: aio_pika.Message,
                           delay: float, product: str) -> None:
    """Publish to ``queue`` now, or after ``delay`` seconds: through Leveret's delayed exchange, or on
    another broker through a wait queue ``<queue>.retry.<ms>`` whose TTL dead-letters it back to ``queue``."""
    ms = round(delay * 1000)
    if ms <= 0:
        await channel.default_exchange.publish(message, routing_key=queue)
    elif product == "Leveret":
        message.headers = {**(message.headers or {}), "x-delay": ms}
        exchange = await channel.get_exchange(DELAYED_EXCHANGE, ensure=False)
        await exchange.publish(message, routing_key=queue)
    else:
        await channel.declare_queue(wait_queue(queue, ms), durable=True, arguments=wait_arguments(queue, ms))
        await channel.default_exchange.publish(message, routing_key=wait_queue(queue, ms))


def wait_arguments(queue: str, ms: int) -> dict[str, Any]:
    return {"x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}


def describe_dead(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    headers = message.headers or {}
    deaths: Any = headers.get("x-death") or [{}]
    reason = headers.get("x-leveret-reason") or (deaths[0].get("reason") if isinstance(deaths[0], dict) else None)
    info: dict[str, Any] = {"id": message.message_id, "reason": reason, "content_type": message.content_type}
    if message.content_type == "application/json":
        with contextlib.suppress(ValueError):
            info["body"] = json.loads(message.body)
            meta = info["body"].get("metadata", {}) if isinstance(info["body"], dict) else {}
            info.update(task=meta.get("task") or meta.get("className"), attempt=meta.get("attempt"))
    else:
        info["body"] = message.body
    info["retry_count"] = headers.get("x-retry-count")
    return info


def restart(message: aio_pika.abc.AbstractIncomingMessage) -> aio_pika.Message:
    """A copy of a dead message for a fresh start: attempt 0, no x-death / x-retry-count / x-delay."""
    drop = ("x-death", "x-retry-count", "x-delay", "x-leveret-reason", "x-leveret-error", "x-first-death-queue",
            "x-first-death-reason", "x-first-death-exchange", "x-last-death-queue", "x-last-death-reason",
            "x-last-death-exchange")
    headers = {k: v for k, v in (message.headers or {}).items() if k not in drop}
    body = message.body
    if message.content_type == "application/octet-stream":
        headers["x-leveret-attempt"] = "0"
    else:
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
            data = json.loads(body)
            data["metadata"]["attempt"] = 0
            body = json.dumps(data).encode()
    return aio_pika.Message(body, content_type=message.content_type, message_id=message.message_id,
                            correlation_id=message.correlation_id, priority=message.priority,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, headers=headers or None,
                            timestamp=message.timestamp, type=message.type)
