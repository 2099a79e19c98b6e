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

Parts of the worker live beside it: ``failures`` (retry, give up, dead-letter), ``messages`` (TaskContext,
decoding, copies of a message), ``worker_out`` (the batched writes and the deferred "started" event),
``threads`` (the sync handlers' threads); their names stay importable from here.
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
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq

from leveret.aioconnect import open_connection
from leveret.amqp import codec
from leveret.tasks.app import (
    CONTROL_EXCHANGE,
    EVENTS_EXCHANGE,
    App,
    Task,
    declare_topology,
    server_product,
)
from leveret.tasks.control import RevokedIds, parse_control
from leveret.tasks.failures import Consumer, Failures, _tag
from leveret.tasks.limits import (
    EXIT_HARD_TIME_LIMIT,
    Running,
    SoftTimeLimitExceeded,
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
from leveret.tasks.middleware import call_hooks
from leveret.tasks.status import MAX_RESULT_BYTES, event
from leveret.tasks.threads import HandlerThreads, Slots
from leveret.tasks.worker_out import EVENT_PROPERTIES, EVENT_PROPERTIES_NO_ID, Outgoing, StartedEvent, StartedEvents

__all__ = ["BadMessage", "Consumer", "HandlerThreads", "Job", "Outgoing", "Slots", "StartedEvent", "TaskContext",
           "Worker", "copy_message", "decode", "error_info", "next_attempt"]

log = logging.getLogger("leveret.tasks.worker")

RECONNECT_FIRST = 0.5  # seconds before the first reconnection attempt (then doubled, capped, jittered)
STABLE_AFTER = 10.0  # a connection that lasted this long resets the back-off
DRAIN_POLL = 0.005  # seconds between two looks at the running handlers while stopping
# What a handler thread did with a job (Worker._run_fast).
RAN, NOT_STARTED, SKIPPED = 0, 1, 2


@dataclass(slots=True, eq=False)
class Job:
    """One delivered message, decoded on the loop when it arrives. ``fast``: a sync handler without middleware,
    rate limit or time limits, run from start to end by a handler thread (``Worker._fast``); otherwise the job
    runs on the loop (``Worker._on_message``), which awaits ``future`` for its slot. ``bad``: the reason and error
    of a message that cannot run (dead-lettered)."""

    consumer: Consumer
    message: aiormq.abc.DeliveredMessage
    ctx: TaskContext
    task: Task | None = None
    payload: dict[str, Any] | None = None
    fast: bool = False
    bad: tuple[str, Exception] | None = None
    future: asyncio.Future[bool] | None = None
    started: StartedEvent | None = None


class Worker(Failures):
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

    # --- fast jobs: run by handler threads -------------------------------------------------------------------

    def _fast(self, job: Job) -> None:
        """In a handler thread holding a slot: run ``job``, hand its outcome to the loop (``_fast_done``: event,
        reply, ack, written in batches), then take the next waiting job with the same slot, without waiting for
        the loop, until none waits (the slot is freed) or the next one must run on the loop (``_give``)."""
        loop = self._loop
        assert loop is not None
        post = self._threads.post
        next_job: Job | None = job
        while next_job is not None:
            job = next_job
            try:
                outcome, result, error = self._run_fast(job, loop)
            except BaseException as exc:  # an interruption (revoke) that landed just after the handler returned
                outcome, result, error = RAN, None, exc
            post(loop, self._fast_done, job, outcome, result, error)
            next_job = self._slots.next_or_release()
            if next_job is not None and not next_job.fast:
                post(loop, self._give, next_job)
                return

    def _run_fast(self, job: Job, loop: asyncio.AbstractEventLoop) -> tuple[int, Any, BaseException | None]:
        """In a handler thread: (RAN, result, exception), or (NOT_STARTED | SKIPPED, None, None)."""
        stopping = self._stopping
        if stopping is None or stopping.is_set() or job.message.channel.is_closed:
            return NOT_STARTED, None, None
        hit = self._count_start()
        if hit is None:
            return NOT_STARTED, None, None
        if hit:
            self._threads.post(loop, self._max_reached)
        ctx = job.ctx
        task = job.task
        assert task is not None and job.payload is not None
        running = Running()
        key = ctx.id or str(id(running))
        self._running[key] = running  # first: a revoke from now on interrupts it (_on_control)
        try:
            if ctx.id and ctx.id in self.revoked:
                return SKIPPED, None, None
            if task.status:
                self._threads.post(loop, self._fast_start, job, time.time())
            try:
                return RAN, running.run_in_thread(task.fn, job.payload), None
            except BaseException as exc:
                return RAN, None, exc
        finally:
            self._running.pop(key, None)

    def _fast_start(self, job: Job, ts: float) -> None:
        """On the loop: a handler thread started ``job`` at ``ts``; its "started" event is due 0.1 s after."""
        assert job.task is not None
        track = job.task.track_started
        job.started = StartedEvent(self, job.ctx, self.app.track_started if track is None else track, ts)

    def _fast_done(self, job: Job, outcome: int, result: Any, error: BaseException | None) -> None:
        """On the loop: what a handler thread did with ``job``; the rest of it, as ``_handle`` would do it."""
        if outcome == NOT_STARTED:
            assert self._stopping is not None
            if self._stopping.is_set() or self._halted:
                self._requeue(job.message)
            return
        try:
            if self._fast_end(job, outcome, result, error):
                self._task_done()
        except Exception as exc:  # a bug of the worker: dead-letter rather than requeue it in a crash loop
            log.exception("cannot process a message of %s", job.consumer.queue)
            self._spawn_after(job, self._dead_letter(job.consumer, job.message, "worker_error", exc, None))

    def _fast_end(self, job: Job, outcome: int, result: Any, error: BaseException | None) -> bool:
        """True when the job is done; False when a coroutine finishes it (or it is left unacked)."""
        task = job.task
        ctx = job.ctx
        assert task is not None
        if outcome == SKIPPED:
            self._skip_revoked(job)
            return True
        if job.started is not None:
            job.started.settle()
        if error is None:
            if task.success_hooks or ctx.metadata.get("link"):
                self._spawn_after(job, self._succeeded(job, result))
                return False
            self._end_ok(job, result)
            return True
        if isinstance(error, TaskRevoked):
            if not error.args:
                error = TaskRevoked(_interrupted_text(task, TaskRevoked, None))
            log.warning("task %s[%s] attempt %d revoked while running", ctx.task, ctx.id, ctx.attempt)
            self._end_revoked(job, error)
            return True
        if isinstance(error, Exception):
            self._spawn_after(job, self._failed(job.consumer, job.message, task, ctx, error, task.status))
            return False
        log.error("task %s[%s] attempt %d: its handler raised %s: not acked (the broker redelivers it)",
                  ctx.task, ctx.id, ctx.attempt, type(error).__name__, exc_info=error)
        return False

    def _spawn_after(self, job: Job, step: Coroutine[Any, Any, None]) -> None:
        """Finish a fast job with a coroutine (failure, hooks, link); ``_drain`` waits for it."""
        future = asyncio.ensure_future(self._after_fast(job, step))
        self._after.add(future)
        future.add_done_callback(self._after.discard)
        future.add_done_callback(lambda _: step.close())  # cancelled before it started: no "never awaited" warning

    async def _after_fast(self, job: Job, step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
        except Exception as exc:
            if job.message.channel.is_closed:  # its delivery died with the connection: the broker redelivers it
                log.warning("task %s[%s]: the connection was lost before its outcome was sent (%s: %s); the broker "
                            "redelivers it", job.ctx.task, job.ctx.id, type(exc).__name__, exc)
            else:  # a bug of the worker: dead-letter rather than requeue it in a crash loop
                log.exception("cannot process a message of %s", job.consumer.queue)
                with contextlib.suppress(Exception):
                    await self._dead_letter(job.consumer, job.message, "worker_error", exc, None)
        self._task_done()

    # --- the rest of a task ----------------------------------------------------------------------------------

    async def _handle(self, job: Job) -> None:
        """A job on the loop (holding its slot): the handler with its limits, then its outcome."""
        consumer, message, ctx = job.consumer, job.message, job.ctx
        if job.bad is not None:
            reason, bad = job.bad
            await self._dead_letter(consumer, message, reason, bad, ctx)
            return
        task = job.task
        assert task is not None and job.payload is not None
        status = task.status
        if ctx.id and ctx.id in self.revoked:
            self._skip_revoked(job)
            return
        bucket = self._buckets.get(task.name)
        if bucket is not None:
            await bucket.acquire()
        if status:
            track = task.track_started
            started: StartedEvent | None = StartedEvent(self, ctx, self.app.track_started if track is None else track)
        else:
            started = None
        middleware = self.app.middleware
        if middleware:
            await call_hooks(middleware, "before_task", self._pool, ctx)
        try:
            try:
                result = await self._run(task, ctx, job.payload)
            finally:
                if started is not None:
                    started.settle()
        except TaskRevoked as exc:
            log.warning("task %s[%s] attempt %d revoked while running", ctx.task, ctx.id, ctx.attempt)
            if middleware:
                await call_hooks(middleware, "after_task", self._pool, ctx, None, exc)
            self._end_revoked(job, exc)
            return
        except Exception as exc:
            await self._failed(consumer, message, task, ctx, exc, status)
            return
        await self._succeeded(job, result)

    def _skip_revoked(self, job: Job) -> None:
        ctx = job.ctx
        log.info("task %s[%s] was revoked: skipped", ctx.task, ctx.id)
        if job.task is not None and job.task.status:
            self.publish_event(ctx, "revoked")
        self._ack_now(job.message)

    def _end_revoked(self, job: Job, exc: TaskRevoked) -> None:
        if job.task is not None and job.task.status:
            self.publish_event(job.ctx, "revoked", error=error_info(exc))
        self._reply_now(job.message, {"ok": False, "error": error_info(exc, tb=False)})
        self._ack_now(job.message)

    async def _succeeded(self, job: Job, result: Any) -> None:
        ctx, task = job.ctx, job.task
        assert task is not None
        middleware = self.app.middleware
        if middleware:
            await call_hooks(middleware, "after_task", self._pool, ctx, result, None)
        if task.success_hooks:
            await self._run_hooks(task.success_hooks, ctx, result)
        link = ctx.metadata.get("link")
        if link:
            await self._send_link(ctx, link, result)
        self._end_ok(job, result)

    def _end_ok(self, job: Job, result: Any) -> None:
        """Reply, "succeeded" event, ack: all queued for the next batched write."""
        task = job.task
        assert task is not None
        self._reply_now(job.message, {"ok": True, "result": result})
        if task.status:
            extra: dict[str, Any] = {}
            if result is None:  # the common case: no JSON size check needed
                if task.keep_result:
                    extra["result"] = None
            elif task.keep_result:
                with contextlib.suppress(TypeError, ValueError):
                    if len(json.dumps(result)) <= MAX_RESULT_BYTES:
                        extra["result"] = result
            self.publish_event(job.ctx, "succeeded", **extra)
        self._ack_now(job.message)

    async def _run(self, task: Task, ctx: TaskContext, payload: dict[str, Any]) -> Any:
        """Run the handler with its time limits, interruptible by revoke."""
        loop = asyncio.get_running_loop()
        running = Running()
        soft = task.soft_time_limit
        hard = task.time_limit
        if soft:
            running.timers.append(loop.call_later(soft, running.interrupt, SoftTimeLimitExceeded))
        if hard:
            running.timers.append(loop.call_later(hard, self._hard_limit, task, ctx, running))
        key = ctx.id or str(id(running))
        self._running[key] = running
        try:
            if task.is_async:
                running.async_task = asyncio.ensure_future(task.fn(**payload))
                try:
                    return await running.async_task
                except asyncio.CancelledError:
                    if running.interrupted is None or running.async_task is None or not running.async_task.cancelled():
                        raise
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    raise running.interrupted(_interrupted_text(task, running.interrupted, soft)) from None
            try:
                return await self._threads.run(loop, running.run_in_thread, task.fn, payload)
            except (SoftTimeLimitExceeded, TaskRevoked) as exc:
                if not exc.args:
                    raise type(exc)(_interrupted_text(task, type(exc), soft)) from None
                raise
        finally:
            running.cancel_timers()
            self._running.pop(key, None)

    def _hard_limit(self, task: Task, ctx: TaskContext, running: Running) -> None:
        """A task exceeded its time_limit: stop consuming and close the connection at once (nothing running is
        acked, so the broker redelivers it), and exit with EXIT_HARD_TIME_LIMIT (``leveret worker``)."""
        log.error("task %s[%s] attempt %d exceeded its time limit of %g s: closing the connection (its message "
                  "is not acked and will be redelivered) and exiting with code %d", ctx.task, ctx.id, ctx.attempt,
                  task.time_limit, EXIT_HARD_TIME_LIMIT)
        self.exit_code = EXIT_HARD_TIME_LIMIT
        if running.async_task is not None:
            running.async_task.cancel()
        assert self._stopping is not None
        self._stopping.set()
        self._notify("hard_time_limit")
        conn = self._conn
        if conn is not None:
            self._closing = asyncio.ensure_future(conn.close())

    async def _send_link(self, ctx: TaskContext, link: Any, result: Any) -> None:
        from leveret.tasks.links import send_link

        try:
            new_id = await send_link(self.app, link, result)
            log.debug("task %s[%s] linked to %s", ctx.task, ctx.id, new_id)
        except Exception:
            log.exception("task %s[%s]: cannot send its link %r", ctx.task, ctx.id, link)

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


def _interrupted_text(task: Task, exc_type: type[Exception], soft: float | None) -> str:
    if exc_type is SoftTimeLimitExceeded:
        return f"task {task.name} exceeded its soft time limit of {soft:g} s"
    return f"task {task.name} was revoked while running"


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # read: a nack on a channel that closed meanwhile is nothing to log
