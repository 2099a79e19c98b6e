"""Dead letters of a task queue (``<queue>.dead``): look at them, or replay them as attempt 0."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import aio_pika

from leveret.tasks.status import event, event_message
from leveret.tasks.topology import EVENTS_EXCHANGE, dead_queue, describe_dead, restart

if TYPE_CHECKING:
    from leveret.tasks.app import App


async def walk(app: App, queue: str, limit: int | None, replay: bool) -> tuple[int, list[dict[str, Any]]]:
    """(moved, seen): with ``replay``, move up to ``limit`` dead letters back to ``queue`` (each publish
    confirmed before its ack), otherwise look at them (taken, then requeued)."""
    session = await app.session()
    if queue in app.queues and queue not in session.declared:
        await app.declare_queue(session, queue)
    channel = await session.conn.channel(publisher_confirms=True)
    seen: list[dict[str, Any]] = []
    held: list[aio_pika.abc.AbstractIncomingMessage] = []
    moved = 0
    try:
        dead = await channel.declare_queue(dead_queue(queue), durable=True)
        count = dead.declaration_result.message_count or 0
        todo = count if limit is None else min(count, limit)
        for _ in range(todo):
            message = await dead.get(no_ack=False, fail=False)
            if message is None:
                break
            if not replay:
                held.append(message)
                seen.append(describe_dead(message))
                continue
            if message.message_id and app.stream_mode(session):  # Leveret's book records "queued" itself
                info = describe_dead(message)
                body, props = event_message(event(message.message_id, str(info.get("task") or message.type or ""),
                                                  queue, "queued", app.status_ttl, replayed=True))
                await session.events.basic_publish(body, exchange=EVENTS_EXCHANGE,
                                                   routing_key=f"{info.get('task')}.queued", properties=props)
            await channel.default_exchange.publish(restart(message), routing_key=queue)
            await message.ack()
            moved += 1
        for message in held:
            await message.nack(requeue=True)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return moved, seen
