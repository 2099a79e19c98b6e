"""The producer side: ``App`` (tasks, sending, status, RPC, revoke). See docs/tasks.md.

All AMQP work happens on a private event loop in a background thread owned by the App (``leveret.tasks.connection``),
so ``send()`` works from plain synchronous code (any thread) and ``send_async()``/``call()`` from any event
loop. Sends are pipelined: many may be in flight on the one confirm channel, each returns when its own confirm
arrives. Nothing is declared per task: a work queue's topology is declared once per connection.

The send paths are in ``leveret.tasks.sending`` (``Sending``, a part of ``App``); the names this module has always
exported (topology helpers, Handle, Task, ...) stay importable from here.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar, cast, overload

import aiormq

from leveret.aioconnect import join_urls
from leveret.outbox.storage import OutboxStorage, is_storage, open_outbox
from leveret.tasks import dead as dead_letters
from leveret.tasks.connection import BrokerUnavailable, Link, Session
from leveret.tasks.fastpub import Pump, Writer
from leveret.tasks.pipeline import Pipeline
from leveret.tasks.retry import Retry
from leveret.tasks.sending import Sending
from leveret.tasks.status import (
    DEFAULT_STATUS_TTL,
    FINAL_STATES,
    STATES,
    StatusStream,
    StatusUnavailable,
    TaskError,
    event,
    event_message,
    merge,
    public,
)
from leveret.tasks.task import Group, Handle, Request, Task
from leveret.tasks.topology import (
    CONTROL_EXCHANGE,
    DELAYED_EXCHANGE,
    EVENTS_EXCHANGE,
    MAX_PRIORITY,
    REPLY_TO,
    STATUS_EXCHANGE,
    dead_queue,
    declare_topology,
    describe_dead,
    now_iso,
    publish_to_queue,
    restart,
    server_product,
    wait_arguments,
    wait_queue,
)

__all__ = [
    "CONTROL_EXCHANGE", "DELAYED_EXCHANGE", "EVENTS_EXCHANGE", "FINAL_STATES", "MAX_PRIORITY", "REPLY_TO",
    "STATES", "STATUS_EXCHANGE", "App", "BrokerUnavailable", "Group", "Handle", "Request", "StatusUnavailable",
    "Task", "TaskError", "dead_queue", "declare_topology", "describe_dead", "now_iso",
    "publish_to_queue", "restart", "server_product", "wait_queue",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class App(Sending):
    """A set of tasks and a connection to a broker (``amqp://user:pass@host:port/vhost``), or to the first
    reachable of several (a list of URLs, or one string of them separated by commas: failover).

    ``send_timeout``: how long a send (or a status read) waits for the broker, including a reconnection,
    before ``BrokerUnavailable``. ``eager=True``: ``send()`` runs the task inline (no broker; unit tests).
    ``track_started=True``: every attempt publishes its "started" event (default: only one still running after
    0.1 s; a shorter one sends its start with its final event; a task's own ``track_started`` overrides this)."""

    def __init__(self, url: str | Sequence[str] = "amqp://guest:guest@127.0.0.1:5672/", *, name: str = "app",
                 status_ttl: float = DEFAULT_STATUS_TTL, outbox: str | os.PathLike[str] | OutboxStorage | None = None,
                 eager: bool = False, send_timeout: float = 10.0, track_started: bool = False) -> None:
        # several URLs (a list, or one string separated by commas): failover, the first that opens is used
        # (aioconnect.open_connection); kept as one string, which the worker and the scheduler connect with too
        self.url = join_urls(url)
        # send() writes to this outbox file (opened at the first send) instead of publishing; a forwarder
        # (leveret forward --outbox PATH --broker URL) publishes it. See docs/outbox.md.
        # (a path, a postgresql:// URL, or an Outbox / PostgresOutbox: open_outbox)
        given = cast(OutboxStorage, outbox) if is_storage(outbox) else None
        self.outbox_path = (getattr(given, "path", None) or given.where) if given is not None else outbox
        self._outbox: OutboxStorage | None = given
        self._outbox_lock = threading.Lock()
        self._own_outbox = given is None
        self.name = name
        self.status_ttl = status_ttl
        self.eager = eager
        self.send_timeout = send_timeout
        self.track_started = track_started
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.middleware: list[Any] = []
        self._replies: dict[str, asyncio.Future[Any]] = {}
        self._eager_records: dict[str, dict[str, Any]] = {}
        self._link = Link(self.url, name, on_connect=self._on_connect, on_reply=self._on_reply)
        self._pump_: Pump | None = None  # the fast path of send() (leveret.tasks.fastpub)
        self._writer = Writer()

    @property
    def product(self) -> str:
        """The broker's ``product`` server property ("Leveret", "RabbitMQ"); "" before the first connection."""
        session = self._link.last
        return session.product if session is not None else ""

    # --- registry ------------------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(self, fn: None = None, *, name: str | None = None, queue: str | None = None,
             retry: Retry | None = None, priority: int | None = None, serial: bool = False, status: bool = True,
             keep_result: bool = True, soft_time_limit: float | None = None, time_limit: float | None = None,
             rate_limit: str | None = None, track_started: bool | None = None
             ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[P, R] | None = None, *, name: str | None = None, queue: str | None = None,
             retry: Retry | None = None, priority: int | None = None, serial: bool = False, status: bool = True,
             keep_result: bool = True, soft_time_limit: float | None = None, time_limit: float | None = None,
             rate_limit: str | None = None, track_started: bool | None = None
             ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Decorator registering a function (sync or async) as a task. ``status=False``: no events, no status
        (raw throughput); ``keep_result=False``: the result is not recorded; ``soft_time_limit`` /
        ``time_limit`` (seconds) and ``rate_limit`` ("10/s", "100/m", "1000/h") are enforced by the worker;
        ``track_started``: True or False overrides the App's ``track_started`` for this task."""
        for label, limit in (("soft_time_limit", soft_time_limit), ("time_limit", time_limit)):
            if limit is not None and limit <= 0:
                raise ValueError(f"{label} must be > 0 seconds, not {limit!r}")

        def register(func: Callable[P, R]) -> Task[P, R]:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            task = Task(self, task_name, func, queue or self.name, retry or Retry.ignore(), priority, serial,
                        status=status, keep_result=keep_result, soft_time_limit=soft_time_limit,
                        time_limit=time_limit, rate_limit=rate_limit, track_started=track_started)
            for other in self.tasks.values():
                if other.queue == task.queue and other.serial != task.serial:
                    raise ValueError(f"tasks of queue {task.queue!r} disagree on serial=")
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(self, **schedule: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
        """``@app.periodic(cron="*/5 * * * *")`` or ``@app.periodic(every=30.0)``: a task fired once per due time
        by the app's schedulers (``leveret beat``); see leveret.tasks.periodic and docs/tasks.md."""
        from leveret.tasks.periodic import periodic

        return periodic(self, **schedule)

    def add_middleware(self, middleware: Any) -> None:
        """Add an object with any of ``before_task(ctx)``, ``after_task(ctx, result, exc)``,
        ``on_retry(ctx, exc, delay)`` (sync or async); the worker calls them around every task."""
        self.middleware.append(middleware)

    @property
    def outbox(self) -> OutboxStorage | None:
        """The App's outbox (opened on first use), or None when it publishes directly."""
        if self._outbox is None and self.outbox_path is not None:
            with self._outbox_lock:
                if self._outbox is None:
                    self._outbox = open_outbox(self.outbox_path)
        return self._outbox

    @property
    def queues(self) -> list[str]:
        return sorted({t.queue for t in self.tasks.values()})

    def queue_arguments(self, queue: str, product: str) -> dict[str, Any]:
        """The arguments a work queue is declared with, the same for producers and workers."""
        tasks = [t for t in self.tasks.values() if t.queue == queue]
        args: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_queue(queue)}
        if any(t.serial for t in tasks):
            args["x-single-active-consumer"] = True
        if any(t.priority is not None for t in tasks):
            args["x-max-priority"] = MAX_PRIORITY
        if product == "Leveret":
            schedule = self.broker_schedule(queue)
            if schedule:
                args["x-retry-intervals"] = schedule
            if not tasks or any(t.status for t in tasks):
                args["x-leveret-status"] = True  # the broker records "queued" (its status book)
        return args

    def broker_schedule(self, queue: str) -> list[int] | None:
        """On Leveret, the x-retry-intervals (ms) of a queue: the longest schedule of its tasks."""
        schedules = [t.retry.delays_ms for t in self.tasks.values() if t.queue == queue and t.retry.delays]
        return max(schedules, key=len) if schedules else None

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run ``coro`` on the App's private loop and wait for its result (from any thread but that loop's)."""
        return self._link.run_sync(coro, timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the App's private loop from another event loop."""
        return await self._link.run_async(coro)

    async def session(self) -> Session:
        """The live connection (waiting up to ``send_timeout`` for one); on the App's loop."""
        return await self._link.session(self.send_timeout)

    def stream_mode(self, session: Session) -> bool:
        """Whether task status goes through the ``leveret.status`` stream on this connection (no status book)."""
        return self._link.stream_mode(session)

    def close(self) -> None:
        """Close the connection and stop the private loop (and the outbox this App opened)."""
        if self._outbox is not None and self._own_outbox:
            self._outbox.close()
            self._outbox = None
        self._link.close()

    # --- connection hooks (on the private loop) ----------------------------------------------------------------

    async def _on_connect(self, session: Session, previous: Session | None) -> None:
        """A new connection: declare again what the previous one had declared, restart the status stream."""
        if self._link.stream_mode(session):
            await (self._link.stream or StatusStream(self.status_ttl)).declare(session.conn)
        for queue in sorted(previous.declared if previous else ()):
            await self.declare_queue(session, queue)
        for target, ms in sorted(previous.waits if previous else ()):
            await self._declare_wait(session, target, ms)
        if self._link.stream is not None:
            await self._link.stream.start(session.conn)

    async def declare_queue(self, session: Session, queue: str) -> None:
        """Declare a work queue's topology on ``session`` (once per connection; on the App's loop)."""
        if queue in self.queues:
            await declare_topology(session.channel, self, queue, session.product)
        session.declared.add(queue)

    async def _declare_wait(self, session: Session, queue: str, ms: int) -> None:
        """The wait queue ``<queue>.retry.<ms>`` (RabbitMQ's delays: its TTL dead-letters back to ``queue``)."""
        await session.channel.declare_queue(wait_queue(queue, ms), durable=True, arguments=wait_arguments(queue, ms))
        session.waits.add((queue, ms))

    def _on_reply(self, message: aiormq.abc.DeliveredMessage) -> None:
        cid = message.header.properties.correlation_id or ""
        session = self._link.current
        if cid.startswith("status-"):
            if session is not None and session.book is not None:
                session.book.on_reply(cid, message.body)
            return
        future = self._replies.pop(cid, None)
        if future is None or future.done():
            return
        try:
            answer = json.loads(message.body)
        except ValueError:
            future.set_exception(TaskError("ValueError", "unreadable reply", cid))
            return
        if answer.get("ok"):
            future.set_result(answer.get("result"))
        else:
            err = answer.get("error") or {}
            future.set_exception(TaskError(str(err.get("type", "Exception")), str(err.get("message", "")), cid,
                                           err.get("traceback")))

    # --- status --------------------------------------------------------------------------------------------

    def status(self, task_id: str) -> str:
        """The last known state of a task: "queued", "started", "retrying", "succeeded", "gave_up",
        "revoked", or "unknown" (never sent, sent with status=False, or its record expired)."""
        return str(self.status_info(task_id)["state"])

    def status_info(self, task_id: str) -> dict[str, Any]:
        """The task's record (docs/tasks.md, "Job status"); ``{"id": ..., "state": "unknown"}`` when none."""
        if self.eager:
            return self._eager(task_id)
        return self._link.run_sync(self._status(task_id), self.send_timeout + 5)

    async def status_async(self, task_id: str) -> str:
        return str((await self.status_info_async(task_id))["state"])

    async def status_info_async(self, task_id: str) -> dict[str, Any]:
        if self.eager:
            return self._eager(task_id)
        return await self._link.run_async(self._status(task_id))

    def _eager(self, task_id: str) -> dict[str, Any]:
        return public(self._eager_records.get(task_id)) or {"id": task_id, "state": "unknown"}

    async def _status(self, task_id: str) -> dict[str, Any]:
        if self.eager:
            return self._eager(task_id)
        session = await self._link.session(self.send_timeout)
        if session.status_book:
            await self._link.rpc(session)
            assert session.book is not None
            record = await asyncio.wait_for(session.book.read(task_id), self.send_timeout)
        elif session.product == "Leveret":
            raise StatusUnavailable(f"the broker at {self.url} is a Leveret without a status book "
                                    f"(no exchange {STATUS_EXCHANGE}): upgrade it to read task status")
        else:
            stream = await self._link.status_stream(session, self.status_ttl, [task_id])
            record = await stream.read(session.events, task_id, self.send_timeout)
        return record or {"id": task_id, "state": "unknown"}

    async def wait_record(self, task_id: str, timeout: float, poll: float, task: str | None) -> dict[str, Any]:
        """The record of ``task_id`` once final (polled every ``poll`` s); on the App's loop."""
        """The record once final (polled every ``poll`` s; on the status stream, woken by the event itself)."""
        deadline = time.monotonic() + timeout
        if not self.eager:
            session = await self._link.session(self.send_timeout)
            if self._link.stream_mode(session):
                stream = await self._link.status_stream(session, self.status_ttl, [task_id])
                found = await stream.wait_final(session.events, task_id, timeout)
                if found is not None and found["state"] in FINAL_STATES:
                    return found
                record = found or {"id": task_id, "state": "unknown"}
                raise TimeoutError(f"task {task or record.get('task') or '?'} ({task_id}) still "
                                   f"{record['state']!r} after {timeout:g} s")
        while True:
            record = await self._status(task_id)
            if record["state"] in FINAL_STATES:
                return record
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task or record.get('task') or '?'} ({task_id}) still {record['state']!r} "
                                   f"after {timeout:g} s")
            await asyncio.sleep(poll)

    def result(self, task_id: str, timeout: float = 30.0) -> Any:
        """The result of a task once it succeeded (None when it keeps none); TaskError when it gave up or was
        revoked; TimeoutError (naming the task and id) after ``timeout`` seconds."""
        if self.eager:
            return outcome(self._eager(task_id))
        return outcome(self._link.run_sync(self.wait_record(task_id, timeout, 0.05, None), timeout + 10))

    async def result_async(self, task_id: str, timeout: float = 30.0) -> Any:
        if self.eager:
            return outcome(self._eager(task_id))
        return outcome(await self._link.run_async(self.wait_record(task_id, timeout, 0.05, None)))

    def revoke(self, task_id: str) -> None:
        """Revoke a task: workers skip it when it is delivered and interrupt it if it runs; its record becomes
        "revoked". (Published to the fanout exchange ``leveret.control`` and as an event.)"""
        if self.eager:
            record = self._eager_records.get(task_id)
            if record is not None and record["state"] not in FINAL_STATES:
                merge(record, event(task_id, record["task"], record["queue"], "revoked", self.status_ttl))
            return
        self._link.run_sync(self._revoke(task_id), self.send_timeout + 5)

    async def _revoke(self, task_id: str) -> None:
        session = await self._link.session(self.send_timeout)
        await session.channel.declare_exchange(CONTROL_EXCHANGE, "fanout", durable=True)
        await session.channel.declare_exchange(EVENTS_EXCHANGE, "topic", durable=True)
        known = await self._status(task_id) if session.product != "Leveret" or session.status_book else {}
        body, props = event_message(event(task_id, str(known.get("task") or ""), str(known.get("queue") or ""),
                                          "revoked", self.status_ttl, attempt=int(known.get("attempt") or 0)))
        await session.raw.basic_publish(json.dumps({"revoke": task_id, "ts": time.time()}).encode(),
                                        exchange=CONTROL_EXCHANGE, routing_key="",
                                        properties=aiormq.spec.Basic.Properties(content_type="application/json",
                                                                                delivery_mode=2))
        await session.raw.basic_publish(body, exchange=EVENTS_EXCHANGE,
                                        routing_key=f"{known.get('task') or 'unknown'}.revoked", properties=props)

    # --- many sends from one thread --------------------------------------------------------------------------

    def pipeline(self, window: int = 1000) -> Pipeline:
        """Sends whose confirms are awaited together, up to ``window`` at once: ``with app.pipeline() as p:
        p.send(task, ...)``; leaving the block waits for every confirm (leveret/tasks/pipeline.py)."""
        return Pipeline(self, window)

    # --- multicast -------------------------------------------------------------------------------------------

    def multicast(self, requests: list[Request]) -> Group:
        """Send several tasks (typically one payload to the tasks of several queues) as one: the returned
        ``Group`` is done when all of them are. With an outbox, they are saved in one transaction."""
        if self.eager:
            return Group([self._run_eager(r.task, r.payload) for r in requests])
        if self.outbox is not None:
            made = [self._outbox_message(r.task, r.payload) for r in requests]
            self.outbox.send_many([m for _, m in made])
            return Group([Handle(self, task_id) for task_id, _ in made])
        return self._link.run_sync(self._multicast(requests), self.send_timeout + 5)

    async def multicast_async(self, requests: list[Request]) -> Group:
        if self.outbox_path is not None or self.eager:  # opening the outbox may wait (busy timeout): a thread
            return await asyncio.to_thread(self.multicast, requests)
        return await self._link.run_async(self._multicast(requests))

    async def _multicast(self, requests: list[Request]) -> Group:
        """All published at once (one batch of the fast path), their confirms awaited together (pipelined)."""
        return Group(list(await asyncio.gather(*(self._fast_async(r.task, self.build_message(r.task, r.payload))
                                                 for r in requests))))

    # --- dead letters -----------------------------------------------------------------------------------------

    def dead_letters(self, queue: str, limit: int = 100) -> list[dict[str, Any]]:
        """Look at (without removing) up to ``limit`` messages of ``<queue>.dead``: id, task, attempt, reason
        and the decoded body."""
        return self._link.run_sync(dead_letters.walk(self, queue, limit, replay=False))[1]

    def replay_dead(self, queue: str, limit: int | None = None) -> int:
        """Move the messages of ``<queue>.dead`` (at most ``limit``) back to ``queue`` as attempt 0;
        return how many were moved."""
        return self._link.run_sync(dead_letters.walk(self, queue, limit, replay=True))[0]

    # --- RPC ------------------------------------------------------------------------------------------------

    async def gather(self, requests: list[Request], timeout: float = 30.0, *,
                     return_exceptions: bool = False) -> list[Any]:
        """Send all requests at once, then wait for every reply, with one ``timeout`` for all of them.
        Returns the results in order; raises the first ``TaskError``, or ``TimeoutError`` (naming the tasks).

        With ``return_exceptions=True`` nothing is raised: whatever arrived within ``timeout`` is returned, and
        in the place of each request that failed its ``TaskError``, of each that did not answer in time a
        ``TimeoutError`` (a dashboard shows the fast answers when one service is slow)."""
        return await self._link.run_async(self.gather_requests(requests, timeout, return_exceptions))

    async def gather_requests(self, requests: list[Request], timeout: float,
                              return_exceptions: bool = False) -> list[Any]:
        """``gather`` on the App's own loop (``run_sync``/``run_async`` take it there)."""
        if self.eager:  # inline, one after the other
            results: list[Any] = []
            for r in requests:
                handle = await asyncio.to_thread(self._run_eager, r.task, r.payload)
                try:
                    results.append(outcome(self._eager(handle.id)))
                except TaskError as exc:
                    if not return_exceptions:
                        raise
                    results.append(exc)
            return results
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in requests]
        handles: list[Handle[Any]] = []
        try:
            handles = list(await asyncio.gather(*(self._publish(r.task, r.payload, f)
                                                  for r, f in zip(requests, futures, strict=True))))
            if futures:
                await asyncio.wait(futures, timeout=timeout)
            late = [f"{r.task.name} ({h.id})" for r, h, f in zip(requests, handles, futures, strict=True)
                    if not f.done()]
            if return_exceptions:
                return [(f.exception() or f.result()) if f.done() else
                        TimeoutError(f"task {r.task.name} ({h.id}): no reply within {timeout:g} s")
                        for f, r, h in zip(futures, requests, handles, strict=True)]
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            if late:
                raise TimeoutError(f"no reply within {timeout:g} s from task {', '.join(late)}")
            return [f.result() for f in futures]
        finally:
            for future in futures:
                future.cancel()
            for handle in handles:
                self._replies.pop(handle.id, None)


def outcome(record: dict[str, Any]) -> Any:
    """The result of a finished task's record, or the TaskError it ended with."""
    if record["state"] == "succeeded":
        return record.get("result")
    error = record.get("error") or {}
    if record["state"] == "revoked":
        raise TaskError("Revoked", "the task was revoked", record.get("id"))
    raise TaskError(str(error.get("type", "Exception")), str(error.get("message", "")), record.get("id"),
                    error.get("traceback"))
