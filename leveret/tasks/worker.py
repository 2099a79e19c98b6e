"""The consumer side: ``Worker`` runs an App's handlers. See docs/tasks.md.

A message is acked only after its handler (and hooks) finished; a failure is retried according to the
message's retry strategy: on Leveret by ``reject(requeue=False)`` on a queue declared with
``x-retry-intervals`` (the broker schedules the retry), elsewhere by publishing the next attempt to a wait
queue ``<queue>.retry.<ms>`` and acking the original. Exhausted retries end in ``<queue>.dead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika

from leveret.tasks.app import (
    EVENTS_EXCHANGE,
    App,
    StatusWriter,
    dead_queue,
    declare_topology,
    now_iso,
    publish_to_queue,
    server_product,
)
from leveret.tasks.retry import Retry

log = logging.getLogger("leveret.tasks.worker")


@dataclass
class TaskContext:
    """What hooks receive about the run."""

    id: str
    task: str
    queue: str
    attempt: int
    payload: Any
    will_retry: bool = False
    next_attempt_at: str | None = None


class Worker:
    """Consume ``queues`` (default: all of the app's) with up to ``concurrency`` handlers at once.

    ``await run()`` until ``stop``; or ``start()``/``stop()`` to run it in a background thread (tests).

    On stop, consuming is cancelled and running handlers get ``grace`` seconds to finish; what is left is not
    acked, so the broker requeues it when the connection closes (``unfinished`` says how many). With
    ``max_tasks``, the worker stops by itself once it has started that many tasks (recycling under a
    supervisor). ``on_event(name, worker)`` is called on the loop with "ready", "task_done" and "max_tasks"."""

    def __init__(self, app: App, *, queues: list[str] | None = None, concurrency: int = 4,
                 prefetch: int | None = None, grace: float = 30.0, max_tasks: int | None = None,
                 on_event: Callable[[str, Worker], None] | None = None) -> None:
        self.app = app
        self.queues = queues or app.queues
        unknown = set(self.queues) - set(app.queues)
        if unknown:
            raise ValueError(f"no task of the app uses queue(s) {', '.join(sorted(unknown))}")
        self.concurrency = concurrency
        self.prefetch = prefetch or concurrency
        self.grace = grace
        self.max_tasks = max_tasks
        self.on_event = on_event
        self.tasks_started = 0
        self.tasks_done = 0
        self.unfinished = 0
        self.product = ""
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="leveret-task")
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._sem: asyncio.Semaphore | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._sem = asyncio.Semaphore(self.concurrency)
        conn = await aio_pika.connect(self.app.url)
        try:
            self.product = server_product(conn)
            self._pub = await conn.channel(publisher_confirms=True)
            self._status = StatusWriter(conn, self.app.status_ttl)
            self._events = await self._pub.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC,
                                                            durable=True)
            consumers = []
            for queue in self.queues:
                serial = any(t.serial for t in self.app.tasks.values() if t.queue == queue)
                channel = await conn.channel(publisher_confirms=True)
                await channel.set_qos(prefetch_count=1 if serial else self.prefetch)
                await declare_topology(channel, self.app, queue, self.product)
                q = await channel.get_queue(queue, ensure=False)
                tag = await q.consume(self._make_callback(queue, channel))
                consumers.append((q, tag))
            self._ready.set()
            self._notify("ready")
            await self._stopping.wait()
            for q, tag in consumers:
                with contextlib.suppress(Exception):
                    await q.cancel(tag)
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=self.grace)
            self.unfinished = len(self._inflight)
            if self.unfinished:
                log.warning("%d task(s) still running after the %g s grace period: not acked, the broker "
                            "requeues them", self.unfinished, self.grace)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
            self._pool.shutdown(wait=False)

    def _notify(self, event: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, self)
            except Exception:
                log.exception("on_event(%r) failed", event)

    def request_stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    def start(self, timeout: float = 10.0) -> Worker:
        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as exc:
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=main, name="leveret-worker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the worker did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- one message -----------------------------------------------------------------------------------------

    def _make_callback(self, queue: str, channel: aio_pika.abc.AbstractChannel) -> Any:
        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            assert self._sem is not None and self._stopping is not None
            await self._sem.acquire()
            if self._stopping.is_set():  # delivered (prefetched) but not started: back to the queue at once
                self._sem.release()
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                return
            self.tasks_started += 1
            if self.max_tasks is not None and self.tasks_started >= self.max_tasks:
                self._stopping.set()
                self._notify("max_tasks")
            task = asyncio.ensure_future(self._process(queue, channel, message))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            task.add_done_callback(lambda _t: self._sem.release() if self._sem else None)

        return on_message

    async def _process(self, queue: str, channel: aio_pika.abc.AbstractChannel,
                       message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            await self._handle(queue, channel, message)
        except Exception:
            log.exception("cannot process message %s of %s", message.message_id, queue)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        self.tasks_done += 1
        self._notify("task_done")

    async def _handle(self, queue: str, channel: aio_pika.abc.AbstractChannel,
                      message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        payload, metadata = decode(message)
        task_id = str(metadata.get("id") or message.message_id or message.correlation_id or "")
        name = str(metadata.get("task") or metadata.get("className") or "")
        count: Any = headers.get("x-retry-count") or 0
        attempt = max(int(metadata.get("attempt") or 0), int(count))
        task = self.app.tasks.get(name)
        ctx = TaskContext(task_id, name, queue, attempt, payload)
        if task is None or payload is None:
            reason = "unknown task" if payload is not None else "unreadable message"
            await self._give_up(queue, message, ctx, ValueError(f"{reason} {name!r}"), reply=True)
            return
        retry = Retry.from_wire(metadata.get("retry")) or task.retry
        await self._event(ctx, "received")
        await self._event(ctx, "started")
        try:
            kwargs = payload if isinstance(payload, dict) else {"data": payload}
            if inspect.iscoroutinefunction(task.fn):
                result = await task.fn(**kwargs)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, lambda: task.fn(**kwargs))
        except Exception as exc:
            await self._failed(queue, channel, message, task, retry, ctx, exc)
            return
        await self._run_hooks(task.success_hooks, ctx, result)
        await self._reply(message, {"ok": True, "result": result})
        await self._event(ctx, "succeeded")
        await message.ack()

    async def _failed(self, queue: str, channel: aio_pika.abc.AbstractChannel,
                      message: aio_pika.abc.AbstractIncomingMessage, task: Any, retry: Retry,
                      ctx: TaskContext, exc: Exception) -> None:
        delay = retry.next_delay(ctx.attempt)
        error = {"type": type(exc).__name__, "message": str(exc)}
        if delay is None:
            await self._give_up(queue, message, ctx, exc, hooks=task.failure_hooks)
            return
        ctx.will_retry = True
        ctx.next_attempt_at = datetime.fromtimestamp(time.time() + delay, UTC).isoformat()
        await self._event(ctx, "failed", error=error)
        await self._run_hooks(task.failure_hooks, ctx, exc)
        await self._event(ctx, "retrying", error=error, next_attempt_at=ctx.next_attempt_at)
        schedule = self.app.broker_schedule(queue) if self.product == "Leveret" else None
        if schedule is not None and ctx.attempt < len(schedule) and schedule[ctx.attempt] == round(delay * 1000):
            await message.reject(requeue=False)  # Leveret's x-retry-intervals re-enqueues it after the delay
            return
        await publish_to_queue(channel, queue, next_attempt(message, ctx.attempt + 1), delay, self.product)
        await message.ack()

    async def _give_up(self, queue: str, message: aio_pika.abc.AbstractIncomingMessage, ctx: TaskContext,
                       exc: Exception, hooks: list[Any] | None = None, reply: bool = True) -> None:
        error = {"type": type(exc).__name__, "message": str(exc)}
        await self._event(ctx, "failed", error=error)
        if hooks:
            await self._run_hooks(hooks, ctx, exc)
        schedule = self.app.broker_schedule(queue) if self.product == "Leveret" else None
        if schedule is None or ctx.attempt >= len(schedule):
            # The queue's dead-letter exchange moves it to <queue>.dead (with x-death).
            await self._reply(message, {"ok": False, "error": error})
            await self._event(ctx, "gave_up", error=error)
            await message.reject(requeue=False)
            return
        dead = next_attempt(message, ctx.attempt)
        dead.headers = {**(dead.headers or {}), "x-leveret-reason": "retries_exhausted",
                        "x-leveret-error": json.dumps(error)}
        await self._pub.default_exchange.publish(dead, routing_key=dead_queue(queue))
        await self._reply(message, {"ok": False, "error": error})
        await self._event(ctx, "gave_up", error=error)
        await message.ack()

    async def _reply(self, message: aio_pika.abc.AbstractIncomingMessage, answer: dict[str, Any]) -> None:
        if not message.reply_to:
            return
        try:
            body = json.dumps(answer).encode()
        except (TypeError, ValueError) as exc:
            body = json.dumps({"ok": False, "error": {"type": "TypeError", "message": f"result: {exc}"}}).encode()
        with contextlib.suppress(Exception):
            await self._pub.default_exchange.publish(
                aio_pika.Message(body, content_type="application/json", correlation_id=message.correlation_id),
                routing_key=message.reply_to)

    async def _event(self, ctx: TaskContext, state: str, **extra: Any) -> None:
        body = {"id": ctx.id, "task": ctx.task, "queue": ctx.queue, "state": state, "attempt": ctx.attempt,
                "at": now_iso(), **extra}
        await self._events.publish(aio_pika.Message(json.dumps(body).encode(), content_type="application/json",
                                                    message_id=ctx.id), routing_key=f"{ctx.task}.{state}")
        if ctx.id:
            try:
                await self._status.write(ctx.id, state, {"task": ctx.task, "attempt": ctx.attempt, **extra})
            except Exception:  # a status is not worth failing (and redoing) the task for
                log.warning("cannot record the status %s of task %s", state, ctx.id, exc_info=True)

    async def _run_hooks(self, hooks: list[Any], ctx: TaskContext, arg: Any) -> None:
        loop = asyncio.get_running_loop()
        for hook in hooks:
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(ctx, arg)
                else:  # a sync hook runs in the thread pool, as sync handlers do
                    await loop.run_in_executor(self._pool, hook, ctx, arg)
            except Exception:
                log.exception("hook %r of task %s failed", hook, ctx.task)


def decode(message: aio_pika.abc.AbstractIncomingMessage) -> tuple[Any, dict[str, Any]]:
    """(payload, metadata) of a task message: JSON ``{"payload", "metadata"}`` or a binary body with the
    metadata in ``x-leveret-*`` headers. The payload is None when the message cannot be read."""
    headers = message.headers or {}
    if message.content_type == "application/octet-stream":
        metadata: dict[str, Any] = {}
        for key, value in headers.items():
            if key.startswith("x-leveret-"):
                raw = value.decode() if isinstance(value, bytes) else value
                try:
                    metadata[key[len("x-leveret-"):]] = json.loads(raw) if isinstance(raw, str) else raw
                except ValueError:
                    metadata[key[len("x-leveret-"):]] = raw
        return message.body, metadata
    try:
        data = json.loads(message.body)
    except ValueError:
        return None, {}
    if not isinstance(data, dict) or not isinstance(data.get("metadata", {}), dict):
        return None, {}
    payload = data.get("payload", {})
    return (payload if isinstance(payload, dict) else None), data.get("metadata", {})


def next_attempt(message: aio_pika.abc.AbstractIncomingMessage, attempt: int) -> aio_pika.Message:
    """A copy of ``message`` for attempt number ``attempt`` (in the body's metadata and ``x-retry-count``)."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in ("x-death", "x-delay")}
    headers["x-retry-count"] = attempt
    body = message.body
    if message.content_type == "application/octet-stream":
        headers["x-leveret-attempt"] = json.dumps(attempt)
    else:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            data = json.loads(body)
            data["metadata"]["attempt"] = attempt
            body = json.dumps(data).encode()
    return aio_pika.Message(body, content_type=message.content_type, message_id=message.message_id,
                            correlation_id=message.correlation_id, reply_to=message.reply_to,
                            priority=message.priority, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            headers=headers, timestamp=message.timestamp)
