"""How the worker ends a task that failed or cannot run (``Failures``, a part of ``Worker``): retry it (by the
queue's own schedule on Leveret, or by publishing the next attempt with a delay), give up (to ``<queue>.dead``),
or dead-letter a message it cannot run, each with its event, hooks, reply and one log line."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq

from leveret.tasks.messages import TaskContext, copy_message, error_info, next_attempt
from leveret.tasks.middleware import call_hooks
from leveret.tasks.retry import Retry
from leveret.tasks.topology import dead_queue, publish_to_queue

if TYPE_CHECKING:
    from leveret.tasks.app import App
    from leveret.tasks.task import Task

log = logging.getLogger("leveret.tasks.worker")


@dataclass
class Consumer:
    """One consumed queue: its aio-pika channel, the aiormq channel under it, the consumer tag."""

    queue: str
    channel: aio_pika.abc.AbstractChannel
    raw: aiormq.abc.AbstractChannel
    tag: str = ""


class Failures:
    """The failure paths of ``Worker`` (which defines the attributes and methods declared here)."""

    app: App
    product: str
    _confirm: aio_pika.abc.AbstractChannel | None
    _pool: ThreadPoolExecutor

    if TYPE_CHECKING:
        async def _run_hooks(self, hooks: list[Any], ctx: TaskContext, arg: Any) -> None: ...
        async def _reply(self, message: aiormq.abc.DeliveredMessage, answer: dict[str, Any]) -> None: ...
        async def _event(self, ctx: TaskContext, state: str, **extra: Any) -> None: ...
        async def _ack(self, message: aiormq.abc.DeliveredMessage) -> None: ...

    async def _failed(self, consumer: Consumer, message: aiormq.abc.DeliveredMessage, task: Task,
                      ctx: TaskContext, exc: Exception, status: bool) -> None:
        retry = Retry.from_wire(ctx.metadata.get("retry")) or task.retry
        delay = retry.next_delay(ctx.attempt)
        error = error_info(exc)
        queue = consumer.queue
        middleware = self.app.middleware
        if delay is None:
            log.error("task %s[%s] attempt %d failed: %s: %s; giving up", ctx.task, ctx.id, ctx.attempt,
                      type(exc).__name__, exc, exc_info=exc)
            if middleware:
                await call_hooks(middleware, "after_task", self._pool, ctx, None, exc)
            if task.failure_hooks:
                await self._run_hooks(task.failure_hooks, ctx, exc)
            await self._reply(message, {"ok": False, "error": error_info(exc, tb=False)})
            if status:
                await self._event(ctx, "gave_up", error=error)
            schedule = self.app.broker_schedule(queue) if self.product == "Leveret" else None
            if schedule is None or ctx.attempt >= len(schedule):
                # The queue's dead-letter exchange moves it to <queue>.dead (with x-death).
                await message.channel.basic_reject(_tag(message), requeue=False)
                return
            await self._publish_dead(message, queue, "retries_exhausted", error, ctx.attempt)
            await self._ack(message)
            return
        ctx.will_retry = True
        due = time.time() + delay
        ctx.next_attempt_at = datetime.fromtimestamp(due, UTC).isoformat()
        log.warning("task %s[%s] attempt %d failed: %s: %s; retrying in %.3g s", ctx.task, ctx.id, ctx.attempt,
                    type(exc).__name__, exc, delay, exc_info=exc)
        if middleware:
            await call_hooks(middleware, "after_task", self._pool, ctx, None, exc)
            await call_hooks(middleware, "on_retry", self._pool, ctx, exc, delay)
        if task.failure_hooks:
            await self._run_hooks(task.failure_hooks, ctx, exc)
        if status:
            await self._event(ctx, "retrying", error=error, next_attempt_at=due)
        schedule = self.app.broker_schedule(queue) if self.product == "Leveret" else None
        if (retry.strategy != "backoff" and schedule is not None and ctx.attempt < len(schedule)
                and schedule[ctx.attempt] == round(delay * 1000)):
            await message.channel.basic_reject(_tag(message), requeue=False)  # the broker re-enqueues it later
            return
        assert self._confirm is not None
        await publish_to_queue(self._confirm, queue, next_attempt(message, ctx.attempt + 1), delay, self.product)
        await self._ack(message)

    async def _dead_letter(self, consumer: Consumer, message: aiormq.abc.DeliveredMessage, reason: str,
                           exc: Exception, ctx: TaskContext | None) -> None:
        """A message the worker cannot run: to ``<queue>.dead`` with ``x-leveret-reason``, an event, a log line."""
        error = error_info(exc, tb=reason == "worker_error")
        log.error("message %s of queue %s dead-lettered (%s): %s", message.header.properties.message_id,
                  consumer.queue, reason, exc)
        await self._publish_dead(message, consumer.queue, reason, error, None)
        if ctx is not None and ctx.id:
            await self._event(ctx, "gave_up", error=error)
        await self._reply(message, {"ok": False, "error": error_info(exc, tb=False)})
        await self._ack(message)

    async def _publish_dead(self, message: aiormq.abc.DeliveredMessage, queue: str, reason: str,
                            error: dict[str, Any], attempt: int | None) -> None:
        dead = copy_message(message, attempt)
        dead.headers = {**(dead.headers or {}), "x-leveret-reason": reason,
                        "x-leveret-error": json.dumps({k: v for k, v in error.items() if k != "traceback"})}
        assert self._confirm is not None
        await self._confirm.default_exchange.publish(dead, routing_key=dead_queue(queue))


def _tag(message: aiormq.abc.DeliveredMessage) -> int:
    tag: Any = message.delivery.delivery_tag  # type: ignore[union-attr]
    return int(tag)
