"""The consumer side: ``Worker`` runs an App's handlers. See docs/tasks.md.

Per task the worker publishes to ``leveret.events`` one of succeeded / retrying / gave_up / revoked, preceded by
"started" when the task ran longer than 0.1 s or ``track_started`` is set (else the final event carries the start
in its ``started`` field; see ``StartedEvent``), transient and without waiting for confirms, and acks the message
(no round trip) only after the handler, its hooks and the final event. A failure is
retried according to the message's retry strategy: on Leveret by ``reject(requeue=False)`` on a queue declared with
``x-retry-intervals`` when the delay is the queue's, otherwise by publishing the next attempt (confirmed) with a
delay (Leveret's delayed exchange, or a wait queue ``<queue>.retry.<ms>`` elsewhere) and acking the original.
Exhausted retries, unknown task names and unreadable messages end in ``<queue>.dead``.

Concurrency: ``concurrency`` slots (``threads.Slots``) shared by the loop and the handler threads. A sync task
without middleware, rate limit or time limits (a "fast" ``Job``) runs in a handler thread, which then takes the
next waiting message itself (no event-loop turn between two tasks); the loop decodes deliveries, runs everything
else, and writes the threads' events and acks in batches.

The worker reconnects by itself (capped exponential back-off with jitter) when the connection drops; messages
whose delivery died with the connection are never acked on the new one (the broker redelivers them).

Parts of the worker live beside it: ``jobs`` (a job's run, fast or on the loop, and its ending), ``failures``
(retry, give up, dead-letter), ``messages`` (TaskContext, decoding, copies of a message), ``worker_out`` (the
batched writes and the deferred "started" event), ``threads`` (the sync handlers' threads); their names stay
importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika
import aiormq

from leveret.aioconnect import open_connection
from leveret.amqp import codec
from leveret.tasks.app import (
    CONTROL_EXCHANGE,
    EVENTS_EXCHANGE,
    App,
    declare_topology,
    server_product,
)
from leveret.tasks.control import RevokedIds, parse_control
from leveret.tasks.failures import Consumer, Failures, _tag
from leveret.tasks.jobs import Job, Jobs
from leveret.tasks.limits import (
    Running,
    TaskRevoked,
    TokenBucket,
)
from leveret.tasks.messages import (
    BadMessage,
    TaskContext,
    copy_message,
    decode,
    error_info,
    next_attempt,
)
from leveret.tasks.status import event
from leveret.tasks.threads import HandlerThreads, Slots
from leveret.tasks.worker_out import EVENT_PROPERTIES, EVENT_PROPERTIES_NO_ID, Outgoing, StartedEvent, StartedEvents

__all__ = ["BadMessage", "Consumer", "HandlerThreads", "Job", "Outgoing", "Slots", "StartedEvent", "TaskContext",
           "Worker", "copy_message", "decode", "error_info", "next_attempt"]

log = logging.getLogger("leveret.tasks.worker")

RECONNECT_FIRST = 0.5  # seconds before the first reconnection attempt (then doubled, capped, jittered)
STABLE_AFTER = 10.0  # a connection that lasted this long resets the back-off
DRAIN_POLL = 0.005  # seconds between two looks at the running handlers while stopping
class Worker(Jobs, Failures):
    """Consume ``queues`` (default: all of the app's) with up to ``concurrency`` handlers at once.

    ``await run()`` until ``request_stop()``; or ``start()``/``stop()`` to run it in a background thread (tests).

    On stop, consuming is cancelled and running handlers get ``grace`` seconds to finish; what is left is not
    acked, so the broker requeues it when the connection closes (``unfinished`` says how many). With
    ``max_tasks``, the worker stops by itself once it has started that many tasks (recycling under a
    supervisor). When a task exceeds its ``time_limit``, the worker closes its connection at once (nothing
    running is acked: the broker redelivers it), stops, and sets ``exit_code`` to ``EXIT_HARD_TIME_LIMIT``.

    ``on_event(name, worker)`` is called on the loop with "ready" (first time consuming), "consuming" and
    "not_consuming" (each change; ``worker.consuming``), "task_done", "max_tasks" and "hard_time_limit"."""

    def __init__(self, app: App, *, queues: list[str] | None = None, concurrency: int = 4,
                 prefetch: int | None = None, grace: float = 30.0, max_tasks: int | None = None,
                 on_event: Callable[[str, Worker], None] | None = None, reconnect_max: float = 30.0) -> None:
        self.app = app
        self.queues = queues or app.queues
        unknown = set(self.queues) - set(app.queues)
        if unknown:
            raise ValueError(f"no task of the app uses queue(s) {', '.join(sorted(unknown))}")
        self.concurrency = concurrency
        self.prefetch = prefetch or 2 * concurrency
        self.grace = grace
        self.max_tasks = max_tasks
        self.on_event = on_event
        self.reconnect_max = reconnect_max
        self.tasks_started = 0
        self.tasks_done = 0
        self.unfinished = 0
        self.connections = 0  # successful connections so far (1 + reconnections)
        self.consuming = False
        self._reported: bool | None = None  # the consuming state last told to on_event (None: nothing yet)
        self.exit_code = 0
        self.product = ""
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.revoked = RevokedIds(app.status_ttl)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="leveret-task-hook")  # sync hooks
        self._threads = HandlerThreads(concurrency, "leveret-task")  # sync handlers
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._running: dict[str, Running] = {}
        self._slots = Slots(concurrency)
        self._count_lock = threading.Lock()  # tasks_started and _halted, from handler threads and the loop
        self._halted = False  # max_tasks reached: start nothing more
        self._after: set[asyncio.Future[None]] = set()  # what follows fast jobs on the loop (failures, hooks)
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._events: aiormq.abc.AbstractChannel | None = None
        self._confirm: aio_pika.abc.AbstractChannel | None = None
        self._consumers: list[Consumer] = []
        self._closing: asyncio.Future[Any] | None = None
        self._out = Outgoing()
        self.started_events = StartedEvents()
        self._buckets: dict[str, TokenBucket] = {}
        for task in app.tasks.values():
            if task.queue in self.queues and task.rate_per_second:
                self._buckets[task.name] = TokenBucket(task.rate_per_second)

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    conn = await open_connection(self.app.url, timeout=10)
                except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
                    if self.connections == 0 and self._thread is not None and failures >= 2:
                        raise  # start() in a test: say so rather than wait forever
                    self._set_consuming(False)  # not consuming (yet): the supervisor's health says so
                    delay = self._backoff(failures)
                    failures += 1
                    log.warning("cannot connect to %s (%s: %s): retrying in %.1f s", _safe(self.app.url),
                                type(exc).__name__, exc, delay)
                    await self._sleep(delay)
                    continue
                self._conn = conn
                began = time.monotonic()
                try:
                    lost = await self._session(conn)
                    if time.monotonic() - began >= STABLE_AFTER:
                        failures = 0
                except (TimeoutError, OSError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
                    if self.connections == 0 and isinstance(exc, aiormq.exceptions.ChannelClosed):
                        raise  # refused at the first setup (e.g. a queue declared with other arguments): say so
                    lost = True
                    log.warning("connection to the broker failed while setting up: %s: %s", type(exc).__name__, exc)
                self._set_consuming(False)
                if lost and not self._stopping.is_set():
                    delay = self._backoff(failures)
                    failures += 1
                    log.warning("lost the connection to the broker: reconnecting in %.1f s (unacked tasks are "
                                "redelivered by the broker)", delay)
                    with contextlib.suppress(Exception):
                        await conn.close()
                    await self._sleep(delay)
            await self._drain()
        finally:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
            self._pool.shutdown(wait=False)
            self._threads.shutdown()

    def _backoff(self, failures: int) -> float:
        """Capped exponential back-off with equal jitter."""
        delay = min(self.reconnect_max, RECONNECT_FIRST * 2 ** min(failures, 16))
        return delay / 2 + random.uniform(0, delay / 2)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _session(self, conn: aio_pika.abc.AbstractConnection) -> bool:
        """Declare, consume until stopping (False) or until the connection or a channel dies (True)."""
        assert self._stopping is not None
        self.product = server_product(conn)
        events = await conn.channel(publisher_confirms=False)
        await events.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        self._events = await events.get_underlay_channel()
        self._confirm = await conn.channel(publisher_confirms=True)
        control = await conn.channel(publisher_confirms=False)
        exchange = await control.declare_exchange(CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
        control_queue = await control.declare_queue("", exclusive=True, auto_delete=True)
        await control_queue.bind(exchange)
        await control_queue.consume(self._on_control, no_ack=True)
        channels = [events, self._confirm, control]
        self._consumers = []
        for queue in self.queues:
            serial = any(t.serial for t in self.app.tasks.values() if t.queue == queue)
            channel = await conn.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=1 if serial else self.prefetch)
            await declare_topology(channel, self.app, queue, self.product)
            consumer = Consumer(queue, channel, await channel.get_underlay_channel())
            consumer.tag = str((await consumer.raw.basic_consume(queue, self._callback(consumer))).consumer_tag)
            self._consumers.append(consumer)
            channels.append(channel)
        self.connections += 1
        if self.connections > 1:
            log.info("reconnected to the broker: consuming %s again", ", ".join(self.queues))
        self._set_consuming(True)
        if not self._ready.is_set():
            self._ready.set()
            self._notify("ready")
        transport = conn.transport
        assert transport is not None
        watched: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._stopping.wait()),
                                             asyncio.ensure_future(asyncio.shield(transport.connection.closing))}
        for channel in channels:
            raw = await channel.get_underlay_channel()
            watched.add(asyncio.ensure_future(asyncio.shield(raw.closing)))
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in watched:
                future.cancel()
        return not self._stopping.is_set()

    async def _drain(self) -> None:
        """Stop consuming, give running handlers ``grace`` seconds, then close."""
        self._set_consuming(False)
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.raw.basic_cancel(consumer.tag)
        for job in self._slots.clear_waiting():  # prefetched, not started: back to the queue at once
            if job.future is not None:
                if not job.future.done():
                    job.future.set_result(False)
            else:
                self._requeue(job.message)
        grace = 0.0 if self.exit_code else self.grace
        deadline = time.monotonic() + max(grace, 0.001)
        while not self._quiet() and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        self._out.flush()  # the last acks and events, before the connection closes
        for _ in range(3):
            await asyncio.sleep(0)
        self.unfinished = self._slots.busy + len(self._after)
        if self.unfinished:
            log.warning("%d task(s) still running after the %g s grace period: not acked, the broker "
                        "requeues them", self.unfinished, grace)
        after = list(self._after)  # failures, hooks or links of fast tasks still going: not acked either
        for future in after:
            future.cancel()
        if after:
            await asyncio.gather(*after, return_exceptions=True)

    def _set_consuming(self, consuming: bool) -> None:
        """Record and report a change; the first False is reported too (a connection lost while it was still
        being set up: the supervisor, which assumes a worker consumes, must be told)."""
        self.consuming = consuming
        if consuming != self._reported:
            self._reported = consuming
            self._notify("consuming" if consuming else "not_consuming")

    def _notify(self, event: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, self)
            except Exception:
                log.exception("on_event(%r) failed", event)

    def request_stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: stopped already
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

    # --- control (revoke) ------------------------------------------------------------------------------------

    async def _on_control(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        data = parse_control(message.body)
        task_id = data.get("revoke") if data else None
        if not isinstance(task_id, str) or not task_id:
            log.warning("ignoring an unreadable control message %r", message.body[:200])
            return
        self.revoked.add(task_id)
        running = self._running.get(task_id)
        if running is not None:
            log.warning("task %s revoked while running: interrupting it", task_id)
            running.interrupt(TaskRevoked)

    # --- one message -----------------------------------------------------------------------------------------

    def _callback(self, consumer: Consumer) -> Callable[[aiormq.abc.DeliveredMessage], Any]:
        return lambda message: self._on_message(consumer, message)

    async def _on_message(self, consumer: Consumer, message: aiormq.abc.DeliveredMessage) -> None:
        """A delivery, decoded at once. A fast job (``Job``) goes to a handler thread when a slot is free, else it
        waits and the thread that finishes a task takes it; any other job waits here for its slot and runs on the
        loop (``_handle``)."""
        assert self._stopping is not None and self._loop is not None
        if self._stopping.is_set() or self._halted:  # delivered (prefetched) while stopping: back to the queue
            self._requeue(message)
            return
        job = self._prepare(consumer, message)
        if job.fast:
            if self._slots.take_or_queue(job):
                self._threads.submit(self._fast, job)
            return
        job.future = self._loop.create_future()
        if not self._slots.take_or_queue(job):
            try:
                if not await job.future:
                    self._requeue(message)  # stopping before it got its slot
                    return
            except asyncio.CancelledError:  # (its channel closed) just after the slot was handed to it: pass it on
                if job.future.done() and not job.future.cancelled() and job.future.result():
                    self._release()
                raise
        try:
            if self._stopping.is_set():  # prefetched but not started: back to the queue at once
                self._requeue(message)
                return
            if message.channel.is_closed:  # prefetched on a connection that died meanwhile: redelivered, not run
                return
            hit = self._count_start()
            if hit is None:
                self._requeue(message)
                return
            if hit:
                self._max_reached()
            try:
                await self._handle(job)
            except Exception as exc:  # a bug of the worker: dead-letter rather than requeue it in a crash loop
                log.exception("cannot process a message of %s", consumer.queue)
                with contextlib.suppress(Exception):
                    await self._dead_letter(consumer, message, "worker_error", exc, None)
        finally:
            self._release()
        self._task_done()

    def _prepare(self, consumer: Consumer, message: aiormq.abc.DeliveredMessage) -> Job:
        props = message.header.properties
        headers = props.headers or {}
        try:
            payload, metadata = decode(message.body, props.content_type, headers)
            task_id = str(metadata.get("id") or props.message_id or props.correlation_id or "")
            name = str(metadata.get("task") or metadata.get("className") or props.message_type or "")
            count: Any = headers.get("x-retry-count") or 0
            attempt = max(int(metadata.get("attempt") or 0), int(count))
        except (BadMessage, TypeError, ValueError) as bad:
            reason = bad.reason if isinstance(bad, BadMessage) else "undecodable"
            ctx = TaskContext(str(props.message_id or ""), str(props.message_type or ""), consumer.queue, 0, None,
                              app=self.app)
            return Job(consumer, message, ctx, bad=(reason, bad))
        ctx = TaskContext(task_id, name, consumer.queue, attempt, payload, metadata=metadata, app=self.app)
        task = self.app.tasks.get(name)
        if task is None:
            known = ", ".join(sorted(t for t, v in self.app.tasks.items() if v.queue == consumer.queue))
            unknown = LookupError(f"no task named {name!r} in app {self.app.name!r} (tasks of queue "
                                  f"{consumer.queue!r}: {known or 'none'})")
            return Job(consumer, message, ctx, bad=("unknown_task", unknown))
        fast = not (task.is_async or task.soft_time_limit or task.time_limit or name in self._buckets
                    or self.app.middleware)
        return Job(consumer, message, ctx, task, payload, fast)

    def _count_start(self) -> bool | None:
        """Count a task as started: None when ``max_tasks`` was reached already (start nothing more), True when
        this one reaches it."""
        with self._count_lock:
            if self._halted:
                return None
            self.tasks_started += 1
            if self.max_tasks is not None and self.tasks_started >= self.max_tasks:
                self._halted = True
                return True
            return False

    def _max_reached(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        self._notify("max_tasks")

    def _task_done(self) -> None:
        self.tasks_done += 1
        self._notify("task_done")

    def _requeue(self, message: aiormq.abc.DeliveredMessage) -> None:
        """Give a delivered message back to the broker (not started: stopping)."""
        channel = message.channel
        if channel.is_closed:
            return
        nack = asyncio.ensure_future(channel.basic_nack(_tag(message), requeue=True, wait=False))
        nack.add_done_callback(_retrieve)

    def _release(self) -> None:
        """On the loop, for a slot holder that finished: hand the slot to the next waiting job, or free it."""
        while True:
            job = self._slots.next_or_release()
            if job is None:
                return
            if job.fast:
                self._threads.submit(self._fast, job)
                return
            if job.future is not None and not job.future.done():  # (done: cancelled, its channel closed)
                job.future.set_result(True)
                return

    def _give(self, job: Job) -> None:
        """On the loop: a handler thread handed its slot to ``job``, which runs on the loop."""
        if job.future is None or job.future.done():
            self._release()
        else:
            job.future.set_result(True)

    def _quiet(self) -> bool:
        """No handler running, nothing of theirs left to do on the loop."""
        return self._slots.busy == 0 and not self._threads.posting and not self._after

    async def _ack(self, message: aiormq.abc.DeliveredMessage) -> None:
        self._ack_now(message)

    def _ack_now(self, message: aiormq.abc.DeliveredMessage) -> None:
        """Queue the ack for the next batched write (Outgoing)."""
        try:
            self._out.ack(message.channel, _tag(message))
        except aiormq.exceptions.AMQPError as exc:  # the delivery died with its channel: the broker redelivers it
            log.warning("cannot ack message %s (%s): the broker will redeliver it",
                        message.header.properties.message_id, exc)

    async def _reply(self, message: aiormq.abc.DeliveredMessage, answer: dict[str, Any]) -> None:
        self._reply_now(message, answer)

    def _reply_now(self, message: aiormq.abc.DeliveredMessage, answer: dict[str, Any]) -> None:
        props = message.header.properties
        if not props.reply_to or self._events is None:
            return
        try:
            body = json.dumps(answer).encode()
        except (TypeError, ValueError) as exc:
            body = json.dumps({"ok": False, "error": {"type": "TypeError", "message": f"result: {exc}"}}).encode()
        with contextlib.suppress(Exception):
            self._out.publish(self._events, body, "", props.reply_to, codec.encode_properties(
                {"content_type": "application/json", "correlation_id": props.correlation_id}), urgent=True)

    async def _event(self, ctx: TaskContext, state: str, **extra: Any) -> None:
        """Publish one event to leveret.events: transient, no confirm awaited (status is advisory)."""
        self.publish_event(ctx, state, **extra)

    def publish_event(self, ctx: TaskContext, state: str, **extra: Any) -> None:
        channel = self._events
        if channel is None:
            return
        start = ctx.start_event
        if start is not None and state != "started":  # the attempt's outcome (or revoked)
            ctx.start_event = None
            ts = start.take()
            if ts is not None:  # "started" has not gone: this event carries the start (docs/tasks.md, "Events")
                extra["started"] = ts
        body = event(ctx.id, ctx.task, ctx.queue, state, self.app.status_ttl, ctx.attempt, worker=self.name, **extra)
        try:
            data = json.dumps(body).encode()
        except (TypeError, ValueError):
            body.pop("result", None)
            data = json.dumps(body, default=repr).encode()
        try:
            self._out.publish(channel, data, EVENTS_EXCHANGE, f"{ctx.task or '-'}.{state}",
                              EVENT_PROPERTIES + codec.encode_shortstr(ctx.id) if ctx.id else EVENT_PROPERTIES_NO_ID)
        except Exception as exc:  # a status is not worth failing (and redoing) the task for
            log.debug("cannot publish the event %s of task %s: %s", state, ctx.id, exc)

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



def _safe(url: str) -> str:
    return str(aio_pika.connection.URL(url).with_password("******")) if "@" in url else url


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # read: a nack on a channel that closed meanwhile is nothing to log
