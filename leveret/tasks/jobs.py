"""Running one job of ``Worker`` (``Jobs``, a part of it, as ``Failures`` is): a delivered message decoded into a
``Job``, run either from start to end by a handler thread (a "fast" job: a sync handler without middleware, rate
limit or time limits; the thread then takes the next waiting job itself) or on the loop with its limits, and
ended: succeeded, revoked or failed (``failures``), with its event, reply and ack queued for the batched write."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq

from leveret.tasks.failures import Consumer
from leveret.tasks.limits import EXIT_HARD_TIME_LIMIT, Running, SoftTimeLimitExceeded, TaskRevoked, TokenBucket
from leveret.tasks.messages import TaskContext, error_info
from leveret.tasks.middleware import call_hooks
from leveret.tasks.status import MAX_RESULT_BYTES
from leveret.tasks.threads import HandlerThreads, Slots
from leveret.tasks.worker_out import StartedEvent, StartedEvents

if TYPE_CHECKING:
    from leveret.tasks.app import App
    from leveret.tasks.control import RevokedIds
    from leveret.tasks.task import Task

log = logging.getLogger("leveret.tasks.worker")

# What a handler thread did with a job (Jobs._run_fast).
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


class Jobs:
    """How ``Worker`` (which defines the attributes and methods declared here) runs and ends a job."""

    app: App
    revoked: RevokedIds
    exit_code: int
    _loop: asyncio.AbstractEventLoop | None
    _stopping: asyncio.Event | None
    _halted: bool
    _threads: HandlerThreads
    _slots: Slots
    started_events: StartedEvents
    _running: dict[str, Running]
    _after: set[asyncio.Future[None]]
    _buckets: dict[str, TokenBucket]
    _pool: ThreadPoolExecutor
    _conn: aio_pika.abc.AbstractConnection | None
    _closing: asyncio.Future[Any] | None

    if TYPE_CHECKING:
        def _count_start(self) -> bool | None: ...
        def _max_reached(self) -> None: ...
        def _task_done(self) -> None: ...
        def _requeue(self, message: aiormq.abc.DeliveredMessage) -> None: ...
        def _give(self, job: Job) -> None: ...
        def _notify(self, event: str) -> None: ...
        def _ack_now(self, message: aiormq.abc.DeliveredMessage) -> None: ...
        def _reply_now(self, message: aiormq.abc.DeliveredMessage, answer: dict[str, Any]) -> None: ...
        def publish_event(self, ctx: TaskContext, state: str, **extra: Any) -> None: ...
        async def _run_hooks(self, hooks: list[Any], ctx: TaskContext, arg: Any) -> None: ...
        async def _failed(self, consumer: Consumer, message: aiormq.abc.DeliveredMessage, task: Task,
                          ctx: TaskContext, exc: Exception, status: bool) -> None: ...
        async def _dead_letter(self, consumer: Consumer, message: aiormq.abc.DeliveredMessage, reason: str,
                               exc: Exception, ctx: TaskContext | None) -> None: ...

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


def _interrupted_text(task: Task, exc_type: type[Exception], soft: float | None) -> str:
    if exc_type is SoftTimeLimitExceeded:
        return f"task {task.name} exceeded its soft time limit of {soft:g} s"
    return f"task {task.name} was revoked while running"
