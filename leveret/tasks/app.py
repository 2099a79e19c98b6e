"""The producer side: ``App``, ``Task``, handles, RPC requests. See docs/tasks.md.

All AMQP work happens on a private event loop in a background thread owned by the App, so ``send()`` works
from plain synchronous code (any thread) and ``send_async()``/``call()`` from any event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aio_pika
import aiormq

from leveret.outbox.store import DUE_HEADER, Outbox
from leveret.tasks.retry import Retry

T = TypeVar("T")

EVENTS_EXCHANGE = "leveret.events"
DELAYED_EXCHANGE = "leveret.delayed"
CONTROL_EXCHANGE = "leveret.control"
REPLY_TO = "amq.rabbitmq.reply-to"
STATUS_PREFIX = "leveret.status."
DEFAULT_STATUS_TTL = 86_400.0  # seconds a status is kept after its last read or write
MAX_PRIORITY = 10

# Status states, in the order a task goes through them (a later state wins over an earlier one).
STATES = ("queued", "received", "started", "retrying", "failed", "succeeded", "gave_up")
FINAL_STATES = frozenset({"succeeded", "gave_up"})


class TaskError(Exception):
    """A task's handler raised: ``remote_type`` and ``remote_message`` are the remote exception's."""

    def __init__(self, remote_type: str, remote_message: str, task_id: str | None = None) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.task_id = task_id


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def wait_queue(queue: str, ms: int) -> str:
    return f"{queue}.retry.{ms}"


def dead_queue(queue: str) -> str:
    return f"{queue}.dead"


def server_product(connection: aio_pika.abc.AbstractConnection) -> str:
    transport = getattr(connection, "transport", None)
    props = getattr(getattr(transport, "connection", None), "server_properties", None) or {}
    product = props.get("product", "")
    return product.decode() if isinstance(product, bytes) else str(product)


@dataclass
class Task:
    """A registered task: ``send``/``send_async`` to enqueue, ``call``/``request`` for RPC."""

    app: App
    name: str
    fn: Callable[..., Any]
    queue: str
    retry: Retry
    priority: int | None
    serial: bool
    status: bool = True
    keep_result: bool = True
    soft_time_limit: float | None = None
    time_limit: float | None = None
    rate_limit: str | None = None
    success_hooks: list[Callable[..., Any]] = field(default_factory=list)
    failure_hooks: list[Callable[..., Any]] = field(default_factory=list)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def on_success(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``hook(ctx, result)``, run by the worker after the handler succeeded."""
        self.success_hooks.append(hook)
        return hook

    def on_failure(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``hook(ctx, exc)``, run by the worker after each failed attempt (``ctx.will_retry``)."""
        self.failure_hooks.append(hook)
        return hook

    def check_payload(self, payload: dict[str, Any]) -> None:
        try:
            inspect.signature(self.fn).bind(**payload)
        except TypeError as exc:
            raise TypeError(f"bad payload for task {self.name!r}: {exc}") from None

    def send(self, *, delay: float | None = None, eta: datetime | None = None, priority: int | None = None,
             **payload: Any) -> Handle:
        """Enqueue from synchronous code; returns once the broker has confirmed the message (or, with an
        App(outbox=...), once it is saved in the outbox)."""
        if self.app.outbox is not None:
            return self._send_outbox(payload, delay, eta, priority)
        return self.app._run_sync(self._send(payload, delay, eta, priority, None))

    async def send_async(self, *, delay: float | None = None, eta: datetime | None = None,
                         priority: int | None = None, **payload: Any) -> Handle:
        if self.app.outbox_path is not None:  # not .outbox: opening it may wait (busy timeout) in the loop
            return await self._send_outbox_async(payload, delay, eta, priority)
        return await self.app._run_async(self._send(payload, delay, eta, priority, None))

    def send_bytes(self, data: bytes, *, delay: float | None = None, priority: int | None = None) -> Handle:
        """Enqueue a binary payload (content type application/octet-stream, metadata in headers); the
        handler is called with ``data=<bytes>``."""
        if self.app.outbox is not None:
            return self._send_outbox({"data": data}, delay, None, priority)
        return self.app._run_sync(self._send({"data": data}, delay, None, priority, None))

    def request(self, **payload: Any) -> Request:
        """An RPC request, not yet sent: pass several to ``app.gather``."""
        self.check_payload(payload)
        return Request(self, payload)

    async def call(self, *, timeout: float = 30.0, **payload: Any) -> Any:
        """Run the task remotely and return its result, or raise ``TaskError``; ``TimeoutError`` after
        ``timeout`` seconds."""
        return (await self.app.gather([self.request(**payload)], timeout=timeout))[0]

    def _build(self, payload: dict[str, Any], delay: float | None, eta: datetime | None,
               priority: int | None) -> tuple[str, bytes, dict[str, Any], float]:
        """The task id, body, AMQP properties and delay of a task message (docs/tasks.md, wire format)."""
        binary = set(payload) == {"data"} and isinstance(payload["data"], bytes)
        if not binary:
            self.check_payload(payload)
        if eta is not None:
            delay = max(0.0, (eta - datetime.now(UTC)).total_seconds())
        task_id = uuid.uuid4().hex
        metadata: dict[str, Any] = {
            "task": self.name, "id": task_id, "className": self.name, "attempt": 0,
            "retry": self.retry.to_wire(), "sent_at": now_iso(),
            "eta": datetime.fromtimestamp(time.time() + delay, UTC).isoformat() if delay else None,
        }
        headers: dict[str, Any] = {}
        if binary:
            body = payload["data"]
            headers.update({f"x-leveret-{k}": json.dumps(v) for k, v in metadata.items()})
            content_type = "application/octet-stream"
        else:
            body = json.dumps({"payload": payload, "metadata": metadata}).encode()
            content_type = "application/json"
        prio = priority if priority is not None else self.priority
        props = {"content_type": content_type, "message_id": task_id, "correlation_id": task_id, "priority": prio,
                 "headers": headers or None, "timestamp": datetime.now(UTC)}
        return task_id, body, props, delay or 0.0

    async def _send(self, payload: dict[str, Any], delay: float | None, eta: datetime | None,
                    priority: int | None, reply: asyncio.Future[Any] | None) -> Handle:
        task_id, body, props, delay = self._build(payload, delay, eta, priority)
        app = self.app
        await app._ensure_queue(self.queue)
        await app._write_status(task_id, "queued", {"task": self.name})
        reply_to = None
        if reply is not None:
            reply_to = REPLY_TO
            app._replies[task_id] = reply
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, reply_to=reply_to, **props)
        await app._publish(self.queue, message, delay, rpc=reply is not None)
        return Handle(app, task_id)

    def _outbox_message(self, payload: dict[str, Any], delay: float | None, eta: datetime | None,
                        priority: int | None) -> tuple[str, dict[str, Any]]:
        """A task as an outbox message: to the default exchange, or with a delay to Leveret's delayed exchange
        (declared by the workers) with ``x-delay``. The broker is not asked anything: no status is written
        and no queue declared (the worker declares them; a message that arrives first is parked by the
        forwarder and retried). A delayed task also carries its due time (``x-leveret-due``, ms since the
        epoch): the forwarder sets ``x-delay`` from it when it publishes, so the time the message waited in
        the outbox is not added to its delay."""
        task_id, body, props, delay = self._build(payload, delay, eta, priority)
        exchange = ""
        if delay > 0:
            exchange = DELAYED_EXCHANGE
            props["headers"] = {**(props["headers"] or {}), "x-delay": round(delay * 1000),
                                DUE_HEADER: round((time.time() + delay) * 1000)}
        return task_id, {"exchange": exchange, "routing_key": self.queue, "body": body, "properties": props}

    def _send_outbox(self, payload: dict[str, Any], delay: float | None, eta: datetime | None,
                     priority: int | None) -> Handle:
        task_id, message = self._outbox_message(payload, delay, eta, priority)
        assert self.app.outbox is not None
        self.app.outbox.send(**message)
        return Handle(self.app, task_id)

    async def _send_outbox_async(self, payload: dict[str, Any], delay: float | None, eta: datetime | None,
                                 priority: int | None) -> Handle:
        task_id, message = self._outbox_message(payload, delay, eta, priority)
        outbox = self.app._outbox or await asyncio.to_thread(lambda: self.app.outbox)
        assert outbox is not None
        await outbox.send_async(**message)
        return Handle(self.app, task_id)


@dataclass
class Request:
    task: Task
    payload: dict[str, Any]


class Handle:
    """What ``send()`` returns: the task id, its status and a way to wait for it."""

    def __init__(self, app: App, task_id: str) -> None:
        self.app = app
        self.id = task_id

    def __repr__(self) -> str:
        return f"Handle({self.id!r})"

    def status(self) -> str:
        return self.app.status(self.id)

    def wait(self, timeout: float = 30.0, poll: float = 0.05) -> str:
        """Block until the task succeeded or gave up; return that state. TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.status()
            if state in FINAL_STATES:
                return state
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} still {state!r} after {timeout} s")
            time.sleep(poll)

    async def status_async(self) -> str:
        return await self.app.status_async(self.id)

    async def wait_async(self, timeout: float = 30.0, poll: float = 0.05) -> str:
        """``wait`` for async code: does not block the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            state = await self.status_async()
            if state in FINAL_STATES:
                return state
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} still {state!r} after {timeout} s")
            await asyncio.sleep(poll)


class Group:
    """The handles of a multicast: done when every task is."""

    def __init__(self, handles: list[Handle]) -> None:
        self.handles = handles

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self.handles]

    def status(self) -> str:
        """"succeeded" when all succeeded, "gave_up" when all are done and one gave up, "pending" otherwise."""
        states = [h.status() for h in self.handles]
        if all(s == "succeeded" for s in states):
            return "succeeded"
        return "gave_up" if all(s in FINAL_STATES for s in states) else "pending"

    def wait(self, timeout: float = 30.0, poll: float = 0.05) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.status()
            if state != "pending":
                return state
            if time.monotonic() >= deadline:
                raise TimeoutError(f"multicast {self.ids} still pending after {timeout} s")
            time.sleep(poll)


class App:
    """A set of tasks and a connection to a broker (``amqp://user:pass@host:port/vhost``)."""

    def __init__(self, url: str = "amqp://guest:guest@127.0.0.1:5672/", *, name: str = "app",
                 status_ttl: float = DEFAULT_STATUS_TTL, outbox: str | os.PathLike[str] | Outbox | None = None) -> None:
        self.url = url
        # send() writes to this outbox file (opened at the first send) instead of publishing; a forwarder
        # (leveret forward --outbox PATH --broker URL) publishes it. See docs/outbox.md.
        self.outbox_path = outbox.path if isinstance(outbox, Outbox) else outbox
        self._outbox: Outbox | None = outbox if isinstance(outbox, Outbox) else None
        self._own_outbox = not isinstance(outbox, Outbox)
        self.name = name
        self.status_ttl = status_ttl
        self.tasks: dict[str, Task] = {}
        self.middleware: list[Any] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._rpc_channel: aio_pika.abc.AbstractChannel | None = None
        self._declared: set[str] = set()
        self._replies: dict[str, asyncio.Future[Any]] = {}
        self._connecting: asyncio.Lock | None = None
        self._status_writer: StatusWriter | None = None
        self.product = ""

    # --- registry ------------------------------------------------------------------------------------------

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, queue: str | None = None,
             retry: Retry | None = None, priority: int | None = None, serial: bool = False, status: bool = True,
             keep_result: bool = True, soft_time_limit: float | None = None, time_limit: float | None = None,
             rate_limit: str | None = None) -> Any:
        """Decorator registering a function (sync or async) taking keyword payload as a task."""

        def register(func: Callable[..., Any]) -> Task:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            task = Task(self, task_name, func, queue or self.name, retry or Retry.ignore(), priority, serial,
                        status, keep_result, soft_time_limit, time_limit, rate_limit)
            for other in self.tasks.values():
                if other.queue == task.queue and other.serial != task.serial:
                    raise ValueError(f"tasks of queue {task.queue!r} disagree on serial=")
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def add_middleware(self, middleware: Any) -> None:
        """Add an object with any of before_task(ctx), after_task(ctx, result, exc), on_retry(ctx, exc, delay)."""
        self.middleware.append(middleware)

    @property
    def outbox(self) -> Outbox | None:
        """The App's outbox (opened on first use), or None when it publishes directly."""
        if self._outbox is None and self.outbox_path is not None:
            with self._lock:
                if self._outbox is None:
                    self._outbox = Outbox(self.outbox_path)
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
        return args

    def broker_schedule(self, queue: str) -> list[int] | None:
        """On Leveret, the x-retry-intervals (ms) of a queue: the longest schedule of its tasks."""
        schedules = [t.retry.delays_ms for t in self.tasks.values() if t.queue == queue and t.retry.delays]
        return max(schedules, key=len) if schedules else None

    # --- the private loop ----------------------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name=f"leveret-tasks-{self.name}", daemon=True)
                self._thread.start()
                ready.wait(5)
                self._loop = loop
            return self._loop

    def _run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        loop = self._ensure_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("cannot call a synchronous App method from the App's own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def _run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure_loop()
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def close(self) -> None:
        """Close the connection and stop the private loop (and the outbox this App opened)."""
        if self._outbox is not None and self._own_outbox:
            self._outbox.close()
            self._outbox = None
        loop = self._loop
        if loop is None:
            return

        async def shut() -> None:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
            self._conn = None

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        loop.close()
        self._loop = None
        self._declared.clear()

    # --- connection (on the private loop) -------------------------------------------------------------------

    async def _connection(self) -> aio_pika.abc.AbstractChannel:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None or self._conn.is_closed:
                self._conn = await aio_pika.connect(self.url)
                self.product = server_product(self._conn)
                self._declared.clear()
                self._channel = await self._conn.channel(publisher_confirms=True)
                self._rpc_channel = None
            assert self._channel is not None
            if self._channel.is_closed:
                self._channel = await self._conn.channel(publisher_confirms=True)
            return self._channel

    async def _rpc(self) -> aio_pika.abc.AbstractChannel:
        await self._connection()
        if self._rpc_channel is None or self._rpc_channel.is_closed:
            assert self._conn is not None
            channel = await self._conn.channel(publisher_confirms=False)
            queue = await channel.get_queue(REPLY_TO, ensure=False)
            await queue.consume(self._on_reply, no_ack=True)
            self._rpc_channel = channel
        return self._rpc_channel

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self._replies.pop(message.correlation_id or "", None)
        if future is None or future.done():
            return
        try:
            answer = json.loads(message.body)
        except ValueError:
            future.set_exception(TaskError("ValueError", "unreadable reply", message.correlation_id))
            return
        if answer.get("ok"):
            future.set_result(answer.get("result"))
        else:
            err = answer.get("error") or {}
            future.set_exception(TaskError(str(err.get("type", "Exception")), str(err.get("message", "")),
                                           message.correlation_id))

    async def _ensure_queue(self, queue: str) -> None:
        channel = await self._connection()
        if queue in self._declared:
            return
        await declare_topology(channel, self, queue, self.product)
        self._declared.add(queue)

    async def _publish(self, queue: str, message: aio_pika.Message, delay: float, rpc: bool = False) -> None:
        channel = await (self._rpc() if rpc else self._connection())
        await publish_to_queue(channel, queue, message, delay, self.product)

    # --- status ----------------------------------------------------------------------------------------------

    async def _write_status(self, task_id: str, state: str, extra: dict[str, Any] | None = None) -> None:
        await self._connection()
        assert self._conn is not None
        if self._status_writer is None or self._status_writer.conn is not self._conn:
            self._status_writer = StatusWriter(self._conn, self.status_ttl)
        await self._status_writer.write(task_id, state, extra)

    def status(self, task_id: str) -> str:
        """The last known state of a task: "queued", "received", "started", "retrying", "failed",
        "succeeded", "gave_up", or "unknown" (never sent, or its status expired)."""
        return str(self.status_info(task_id).get("state", "unknown"))

    def status_info(self, task_id: str) -> dict[str, Any]:
        return self._run_sync(self._status(task_id))

    async def status_async(self, task_id: str) -> str:
        return str((await self._run_async(self._status(task_id))).get("state", "unknown"))

    async def _status(self, task_id: str) -> dict[str, Any]:
        await self._connection()
        assert self._conn is not None
        return await read_status(self._conn, task_id)

    # --- multicast -------------------------------------------------------------------------------------------

    def multicast(self, requests: list[Request]) -> Group:
        """Send several tasks (typically one payload to the tasks of several queues) as one: the returned
        ``Group`` is done when all of them are. With an outbox, they are saved in one transaction."""
        if self.outbox is not None:
            made = [r.task._outbox_message(r.payload, None, None, None) for r in requests]
            self.outbox.send_many([m for _, m in made])
            return Group([Handle(self, task_id) for task_id, _ in made])
        return self._run_sync(self._multicast(requests))

    async def multicast_async(self, requests: list[Request]) -> Group:
        if self.outbox_path is not None:  # not .outbox: opening it may wait (busy timeout); in a thread instead
            return await asyncio.to_thread(self.multicast, requests)
        return await self._run_async(self._multicast(requests))

    async def _multicast(self, requests: list[Request]) -> Group:
        return Group([await r.task._send(r.payload, None, None, None, None) for r in requests])

    # --- dead letters -----------------------------------------------------------------------------------------

    def dead_letters(self, queue: str, limit: int = 100) -> list[dict[str, Any]]:
        """Look at (without removing) up to ``limit`` messages of ``<queue>.dead``: id, task, attempt, reason
        and the decoded body."""
        return self._run_sync(self._dead(queue, limit, replay=False))[1]

    def replay_dead(self, queue: str, limit: int | None = None) -> int:
        """Move the messages of ``<queue>.dead`` (at most ``limit``) back to ``queue`` as attempt 0;
        return how many were moved."""
        return self._run_sync(self._dead(queue, limit, replay=True))[0]

    async def _dead(self, queue: str, limit: int | None, replay: bool) -> tuple[int, list[dict[str, Any]]]:
        if queue in self.queues:
            await self._ensure_queue(queue)
        else:
            await self._connection()
        assert self._conn is not None
        channel = await self._conn.channel(publisher_confirms=True)
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
                if message.message_id:  # before the publish, as send() does: a fast worker's states come after
                    await self._write_status(message.message_id, "queued", {"replayed": True})
                await channel.default_exchange.publish(restart(message), routing_key=queue)
                await message.ack()
                moved += 1
            for message in held:
                await message.nack(requeue=True)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return moved, seen

    # --- RPC ------------------------------------------------------------------------------------------------

    async def gather(self, requests: list[Request], timeout: float = 30.0, *,
                     return_exceptions: bool = False) -> list[Any]:
        """Send all requests at once, then wait for every reply, with one ``timeout`` for all of them.
        Returns the results in order; raises the first ``TaskError``, or ``TimeoutError``.

        With ``return_exceptions=True`` nothing is raised: whatever arrived within ``timeout`` is returned, and
        in the place of each request that failed its ``TaskError``, of each that did not answer in time a
        ``TimeoutError`` (a dashboard shows the fast answers when one service is slow)."""
        return await self._run_async(self._gather(requests, timeout, return_exceptions))

    async def _gather(self, requests: list[Request], timeout: float, return_exceptions: bool = False) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        await self._rpc()
        try:
            for req in requests:
                future: asyncio.Future[Any] = loop.create_future()
                futures.append(future)
                await req.task._send(req.payload, None, None, None, future)
            if not return_exceptions:
                return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
            if futures:
                await asyncio.wait(futures, timeout=timeout)
            return [(f.exception() or f.result()) if f.done() else
                    TimeoutError(f"{req.task.name}: no reply within {timeout} s")
                    for f, req in zip(futures, requests, strict=True)]
        finally:
            for future in futures:
                future.cancel()
            for key in [k for k, f in self._replies.items() if f in futures]:
                self._replies.pop(key, None)


# --- topology helpers shared by producers and workers ---------------------------------------------------------


async def declare_topology(channel: aio_pika.abc.AbstractChannel, app: App, queue: str, product: str) -> None:
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
        name = wait_queue(queue, ms)
        await channel.declare_queue(name, durable=True, arguments={
            "x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue})
        await channel.default_exchange.publish(message, routing_key=name)


class StatusWriter:
    """Records task states as the last message of their status queue ``leveret.status.<id>`` (a durable
    queue of length 1 that expires ``ttl`` seconds after its last use), on a channel of its own."""

    def __init__(self, conn: aio_pika.abc.AbstractConnection, ttl: float) -> None:
        self.conn = conn
        self.ttl = ttl
        self.channel: aio_pika.abc.AbstractChannel | None = None

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self.channel is None or self.channel.is_closed:
            self.channel = await self.conn.channel(publisher_confirms=True)
        return self.channel

    async def write(self, task_id: str, state: str, extra: dict[str, Any] | None = None) -> None:
        name = STATUS_PREFIX + task_id
        channel = await self._channel()
        try:
            await channel.declare_queue(name, durable=True, arguments=status_arguments(self.ttl))
        except aiormq.exceptions.ChannelPreconditionFailed:
            # It exists with another retention (another App's status_ttl): keep it as it is.
            self.channel = None
            channel = await self._channel()
        body = {"id": task_id, "state": state, "rank": STATES.index(state), "at": now_iso(), "ts": time.time(),
                **(extra or {})}
        await channel.default_exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=name)


def status_arguments(ttl: float) -> dict[str, Any]:
    return {"x-max-length": 1, "x-expires": int(ttl * 1000)}


async def read_status(conn: aio_pika.abc.AbstractConnection, task_id: str) -> dict[str, Any]:
    """Peek at a task's status queue (get, then requeue); {"state": "unknown"} when it does not exist."""
    channel = await conn.channel()
    try:
        try:
            queue = await channel.declare_queue(STATUS_PREFIX + task_id, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return {"id": task_id, "state": "unknown"}
        best: dict[str, Any] = {"id": task_id, "state": "unknown"}
        got = []
        for _ in range(4):  # length 1, but a write may race with the peek
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            got.append(message)
            with contextlib.suppress(ValueError):
                info = json.loads(message.body)
                if (info.get("ts", 0), info.get("rank", 0)) >= (best.get("ts", 0), best.get("rank", 0)):
                    best = info
        for message in got:
            await message.nack(requeue=True)
        return best
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()



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
                            timestamp=message.timestamp)
