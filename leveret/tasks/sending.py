"""Sending tasks (``Sending``, a part of ``App``): building a task message, the fast path of ``send()`` and
``send_async()`` (``leveret.tasks.fastpub``), the confirmed slow path (first send to a queue, delays, RPC), the
outbox and eager mode. The App defines the attributes and methods declared at the top of ``Sending``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiormq

from leveret.amqp import codec
from leveret.outbox.message import DUE_HEADER
from leveret.outbox.storage import OutboxStorage
from leveret.tasks.connection import BrokerUnavailable, Link, Session
from leveret.tasks.fastpub import Outgoing, Pump, Waiter, Writer, relay
from leveret.tasks.status import event, event_message, merge, new_task_id
from leveret.tasks.task import Handle, Task, run_eager
from leveret.tasks.topology import DELAYED_EXCHANGE, EVENTS_EXCHANGE, REPLY_TO, now_iso, wait_queue

if TYPE_CHECKING:
    from leveret.tasks.app import App

R = TypeVar("R")


class Sending:
    """The send paths of ``App``."""

    url: str
    eager: bool
    outbox_path: Any
    send_timeout: float
    status_ttl: float
    _outbox: OutboxStorage | None
    _link: Link
    _pump_: Pump | None
    _writer: Writer
    _replies: dict[str, asyncio.Future[Any]]
    _eager_records: dict[str, dict[str, Any]]

    def as_app(self) -> App:
        """This object as the App it is a part of (for the handles it returns)."""
        return cast("App", self)

    if TYPE_CHECKING:
        @property
        def outbox(self) -> OutboxStorage | None: ...
        async def declare_queue(self, session: Session, queue: str) -> None: ...
        async def _declare_wait(self, session: Session, queue: str, ms: int) -> None: ...

    def build_message(self, task: Task[Any, Any], payload: dict[str, Any], delay: float | None = None,
               eta: datetime | None = None, priority: int | None = None, task_id: str | None = None,
               metadata: dict[str, Any] | None = None) -> tuple[str, bytes, dict[str, Any], float]:
        """The task id, body, AMQP properties (pamqp names) and delay of a task message (docs/tasks.md)."""
        binary = len(payload) == 1 and isinstance(payload.get("data"), bytes)
        if eta is not None:
            delay = max(0.0, (eta - datetime.now(UTC)).total_seconds())
        task_id = task_id or new_task_id()
        meta: dict[str, Any] = {
            "task": task.name, "id": task_id, "className": task.name, "attempt": 0,
            "retry": task.retry.to_wire(), "sent_at": now_iso(),
            "eta": datetime.fromtimestamp(time.time() + delay, UTC).isoformat() if delay else None,
            **(metadata or {})}
        props: dict[str, Any] = {"message_id": task_id, "correlation_id": task_id, "message_type": task.name,
                                 "delivery_mode": 2, "timestamp": datetime.now(UTC)}
        if binary:
            body = payload["data"]
            props["headers"] = {f"x-leveret-{k}": json.dumps(v) for k, v in meta.items()}
            props["content_type"] = "application/octet-stream"
        else:
            body = json.dumps({"payload": payload, "metadata": meta}).encode()
            props["content_type"] = "application/json"
        prio = priority if priority is not None else task.priority
        if prio is not None:
            props["priority"] = prio
        return task_id, body, props, delay or 0.0

    def submit(self, task: Task[Any, R], payload: dict[str, Any], **options: Any) -> Handle[R]:
        if self.eager:
            return self._run_eager(task, payload)
        if self.outbox is not None:
            task_id, message = self._outbox_message(task, payload, **options)
            self.outbox.send(**message)
            return Handle(self.as_app(), task_id, task.name)
        built = self.build_message(task, payload, **options)
        if built[3] > 0:  # delayed: the old path (wait queues, the delayed exchange)
            return self._link.run_sync(self._publish_built(task, built, None), self.send_timeout + 5)
        waiter = Waiter()
        self.submit_built(task, built, waiter.set)
        if not waiter.wait(self.send_timeout + 1):  # the slow path reports its own timeout at send_timeout
            raise BrokerUnavailable(f"task {task.name} ({built[0]}) not confirmed by the broker at {self.url} "
                                    f"within {self.send_timeout:g} s")
        if waiter.error is not None:
            raise waiter.error
        handle: Handle[R] = waiter.value
        return handle

    def submit_built(self, task: Task[Any, Any], built: tuple[str, bytes, dict[str, Any], float],
                      notify: Callable[[Any, BaseException | None], None]) -> None:
        """Hand a built, undelayed task message to the fast path from a thread other than the App's loop;
        ``notify(handle, None)`` or ``notify(None, error)`` runs on the App's loop when the broker answers."""
        loop = self._link.ensure_loop()
        if threading.current_thread() is self._link.thread:
            raise RuntimeError("cannot call a synchronous App method from the App's own loop")
        self._pump(loop).submit(self._outgoing(task, built, notify))

    def _pump(self, loop: asyncio.AbstractEventLoop) -> Pump:
        pump = self._pump_
        if pump is None or pump.loop is not loop:
            pump = self._pump_ = Pump(loop, self._write_batch)
        return pump

    def _outgoing(self, task: Task[Any, Any], built: tuple[str, bytes, dict[str, Any], float],
                  notify: Callable[[Any, BaseException | None], None]) -> Outgoing:
        """A built task message (``build_message``) with its properties encoded, ready for the fast path."""
        task_id, body, props, _ = built
        wire = dict(props)
        wire["type"] = wire.pop("message_type")
        wire["timestamp"] = int(wire["timestamp"].timestamp())
        queued = None
        if task.status and self._link.stream_fallback():  # RabbitMQ: the producer publishes "queued" itself
            ev_body, ev_props = event_message(event(task_id, task.name, task.queue, "queued", self.status_ttl))
            queued = (ev_body, codec.encode_properties({"content_type": ev_props.content_type,
                                              "delivery_mode": ev_props.delivery_mode,
                                              "message_id": ev_props.message_id}), f"{task.name}.queued")
        return Outgoing(task, task_id, body, props, codec.encode_properties(wire), queued, notify)

    def _write_batch(self, batch: list[Outgoing]) -> None:
        """On the loop: the fast path for what it can take, ``_publish_built`` for the rest."""
        session = self._link.current
        if session is None or not session.alive:
            for item in batch:
                self._slow(item)
            return
        self._writer.write(session, batch, self._link.stream_mode(session), self._slow, self._confirmed)

    def _slow(self, item: Outgoing) -> None:
        def done(future: asyncio.Future[Handle[Any]]) -> None:
            if future.cancelled():
                item.notify(None, BrokerUnavailable(f"task {item.task.name} ({item.task_id}): cancelled"))
            else:
                exc = future.exception()
                item.notify(None if exc is not None else future.result(), exc)

        built = (item.task_id, item.body, item.props, 0.0)
        asyncio.ensure_future(self._publish_built(item.task, built, None)).add_done_callback(done)

    def _confirmed(self, item: Outgoing, confirmation: asyncio.Future[Any]) -> None:
        """The broker's answer to a fast-path publish, as ``_publish_built`` would report it."""
        task = item.task
        if confirmation.cancelled():
            exc: BaseException | None = asyncio.CancelledError()
        else:
            exc = confirmation.exception()
        if exc is None and isinstance(confirmation.result(), aiormq.spec.Basic.Ack):
            item.notify(Handle(self.as_app(), item.task_id, task.name), None)
        elif exc is None or isinstance(exc, aiormq.exceptions.DeliveryError):
            item.notify(None, BrokerUnavailable(f"task {task.name} ({item.task_id}): the broker at {self.url} "
                                                f"refused it ({exc or confirmation.result()})"))
        else:
            item.notify(None, BrokerUnavailable(f"task {task.name} ({item.task_id}): lost the connection to "
                                                f"{self.url} before the broker confirmed it ({exc!r}); it may or "
                                                f"may not be queued"))

    async def submit_async(self, task: Task[Any, R], payload: dict[str, Any], **options: Any) -> Handle[R]:
        if self.eager:
            return await asyncio.to_thread(self._run_eager, task, payload)
        if self.outbox_path is not None:  # not .outbox: opening it may wait (busy timeout) in the loop
            task_id, message = self._outbox_message(task, payload, **options)
            outbox = self._outbox or await asyncio.to_thread(lambda: self.outbox)
            assert outbox is not None
            await outbox.send_async(**message)
            return Handle(self.as_app(), task_id, task.name)
        built = self.build_message(task, payload, **options)
        if built[3] > 0:
            return await self._link.run_async(self._publish_built(task, built, None))
        return await self._fast_async(task, built)

    async def _fast_async(self, task: Task[Any, R], built: tuple[str, bytes, dict[str, Any], float]) -> Handle[R]:
        """The fast path from any event loop: the App's own (no hop) or another (one wake-up each way)."""
        loop = self._link.ensure_loop()
        caller = asyncio.get_running_loop()
        future: asyncio.Future[Handle[R]] = caller.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        if caller is loop:
            notify = settle
        else:
            post = relay(caller).post  # confirms that arrive together wake the caller's loop once

            def notify(value: Any, error: BaseException | None) -> None:
                post(settle, value, error)

        self._pump(loop).submit(self._outgoing(task, built, notify))
        try:
            async with asyncio.timeout(self.send_timeout + 1):
                return await future
        except TimeoutError:
            raise BrokerUnavailable(f"task {task.name} ({built[0]}) not confirmed by the broker at {self.url} "
                                    f"within {self.send_timeout:g} s") from None

    async def _publish(self, task: Task[Any, R], payload: dict[str, Any], reply: asyncio.Future[Any] | None,
                       **options: Any) -> Handle[R]:
        """Publish one task message and wait for its confirm (on the private loop). BrokerUnavailable when the
        broker is not reachable within send_timeout or the connection is lost before the confirm."""
        return await self._publish_built(task, self.build_message(task, payload, **options), reply)

    async def _publish_built(self, task: Task[Any, R], built: tuple[str, bytes, dict[str, Any], float],
                             reply: asyncio.Future[Any] | None) -> Handle[R]:
        task_id, body, props, delay = built
        if reply is not None:
            props["reply_to"] = REPLY_TO
            self._replies[task_id] = reply
        try:
            async with asyncio.timeout(self.send_timeout):
                session = await self._link.session(self.send_timeout)
                if task.queue not in session.declared:
                    await self.declare_queue(session, task.queue)
                if task.status and self._link.stream_mode(session):
                    ev = event(task_id, task.name, task.queue, "queued", self.status_ttl)
                    ev_body, ev_props = event_message(ev)
                    await session.events.basic_publish(ev_body, exchange=EVENTS_EXCHANGE,
                                                       routing_key=f"{task.name}.queued", properties=ev_props)
                channel = await self._link.rpc(session) if reply is not None else session.raw
                exchange, routing_key = "", task.queue
                ms = round(delay * 1000)
                if ms > 0 and session.product == "Leveret":
                    exchange = DELAYED_EXCHANGE
                    props["headers"] = {**(props.get("headers") or {}), "x-delay": ms}
                elif ms > 0:
                    routing_key = wait_queue(task.queue, ms)
                    if (task.queue, ms) not in session.waits:
                        await self._declare_wait(session, task.queue, ms)
                confirm = await channel.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                                      properties=aiormq.spec.Basic.Properties(**props))
        except TimeoutError:
            self._replies.pop(task_id, None)
            raise BrokerUnavailable(f"task {task.name} ({task_id}) not confirmed by the broker at {self.url} "
                                    f"within {self.send_timeout:g} s") from None
        except (aiormq.exceptions.AMQPError, OSError, asyncio.CancelledError) as exc:
            self._replies.pop(task_id, None)
            if isinstance(exc, BrokerUnavailable):
                raise
            if isinstance(exc, asyncio.CancelledError) and not self._link.closed:
                raise
            raise BrokerUnavailable(f"task {task.name} ({task_id}): lost the connection to {self.url} before the "
                                    f"broker confirmed it ({exc!r}); it may or may not be queued") from exc
        if confirm is not None and not isinstance(confirm, aiormq.spec.Basic.Ack):
            self._replies.pop(task_id, None)
            raise BrokerUnavailable(f"task {task.name} ({task_id}): the broker at {self.url} refused it ({confirm})")
        return Handle(self.as_app(), task_id, task.name)

    def _outbox_message(self, task: Task[Any, Any], payload: dict[str, Any],
                        **options: Any) -> tuple[str, dict[str, Any]]:
        """A task as an outbox message: to the default exchange, or with a delay to Leveret's delayed exchange
        (declared by the workers) with ``x-delay``. The broker is not asked anything: no queue is declared
        (the worker declares them; a message that arrives first is parked by the forwarder and retried). A
        delayed task also carries its due time (``x-leveret-due``, ms since the epoch): the forwarder sets
        ``x-delay`` from it when it publishes, so the time the message waited in the outbox is not added."""
        task_id, body, props, delay = self.build_message(task, payload, **options)
        exchange = ""
        if delay > 0:
            exchange = DELAYED_EXCHANGE
            props["headers"] = {**(props.get("headers") or {}), "x-delay": round(delay * 1000),
                                DUE_HEADER: round((time.time() + delay) * 1000)}
        return task_id, {"exchange": exchange, "routing_key": task.queue, "body": body, "properties": props}

    def _run_eager(self, task: Task[Any, R], payload: dict[str, Any]) -> Handle[R]:
        task_id = new_task_id()
        record = merge(None, event(task_id, task.name, task.queue, "started", self.status_ttl))
        try:
            result = run_eager(task, payload)
        except Exception as exc:
            error = {"type": type(exc).__name__, "message": str(exc), "traceback": ""}
            record = merge(record, event(task_id, task.name, task.queue, "gave_up", self.status_ttl, error=error))
        else:
            extra = {"result": result} if task.keep_result else {}
            record = merge(record, event(task_id, task.name, task.queue, "succeeded", self.status_ttl, **extra))
        self._eager_records[task_id] = record
        return Handle(self.as_app(), task_id, task.name)
