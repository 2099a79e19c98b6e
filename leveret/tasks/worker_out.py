"""What the worker writes to the broker: ``Outgoing`` batches its frames (acks, events, RPC replies) into one
write per loop turn; ``StartedEvent`` defers a task's "started" event (see its docstring), ``StartedEvents`` sends
the due ones."""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import ChannelFrame

from leveret.amqp import codec, spec

if TYPE_CHECKING:
    from leveret.tasks.jobs import Jobs
    from leveret.tasks.messages import TaskContext

STARTED_DELAY = 0.1  # seconds a task runs before its "started" event goes (StartedEvent)
# Seconds acks and events wait to be written with others (Outgoing): measured with bench/tasks_cpu.py, 2 ms cut the
# CPU per no-op task ~10 % in the worker and in the broker (fewer, larger writes and reads; docs/performance.md).
WRITE_DELAY = 0.002
_ACK = struct.Struct(">BHIHHQBB")  # frame head, class, method, delivery tag, multiple, frame end
_ACK_METHOD = spec.method("basic.ack").method_id
_PUBLISH = spec.method("basic.publish")
# An event's basic properties, encoded once: content_type application/json, delivery_mode 1, then message_id.
EVENT_PROPERTIES_NO_ID = codec.encode_properties({"content_type": "application/json", "delivery_mode": 1})
EVENT_PROPERTIES = struct.pack(">H", struct.unpack(">H", EVENT_PROPERTIES_NO_ID[:2])[0] | 0x0080) + \
    EVENT_PROPERTIES_NO_ID[2:]


class Outgoing:
    """Frames for the broker (events, replies, acks), written together at most every ``WRITE_DELAY`` seconds
    (replies: at the next loop turn): one write (one send system call, one read for the broker) for many tasks
    instead of one per frame, through aiormq's own write queue. Acks and
    publishes on a channel keep their order; a channel that closed meanwhile is skipped (its deliveries are
    redelivered by the broker). Frames are encoded here with Leveret's own codec (a struct per ack, the basic
    properties of an event or reply with ``codec.encode_properties``), not with pamqp (~3x the time per task)."""

    def __init__(self) -> None:
        self.pending: dict[aiormq.abc.AbstractChannel, list[bytes]] = {}
        self.scheduled = False  # a flush is due (after WRITE_DELAY)
        self.soon = False  # a flush is due at the next loop turn (a reply was added)
        self._methods: dict[tuple[int, str, str], bytes] = {}  # encoded basic.publish frames
        self._puts: set[asyncio.Future[Any]] = set()

    def add(self, channel: aiormq.abc.AbstractChannel, *frames: bytes, urgent: bool = False) -> None:
        """Queue ``frames`` for ``channel``; ``urgent`` (an RPC reply a caller waits for): written at the next
        loop turn rather than after ``WRITE_DELAY``."""
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        pending = self.pending.get(channel)
        if pending is None:
            self.pending[channel] = pending = []
        pending.extend(frames)
        if urgent and not self.soon:
            self.soon = True
            asyncio.get_running_loop().call_soon(self._flush_soon)
        elif not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_later(WRITE_DELAY, self._flush_due)

    def _flush_soon(self) -> None:
        """One loop turn later, so that the coroutines this turn woke add their frames to the same write."""
        asyncio.get_running_loop().call_soon(self.flush)

    def _flush_due(self) -> None:
        self.scheduled = False
        self.flush()

    def ack(self, channel: aiormq.abc.AbstractChannel, delivery_tag: int) -> None:
        number: Any = channel.number
        self.add(channel, _ACK.pack(spec.FRAME_METHOD, number, 13, spec.CLASS_BASIC, _ACK_METHOD, delivery_tag, 0,
                                    spec.FRAME_END))

    def publish(self, channel: aiormq.abc.AbstractChannel, body: bytes, exchange: str, routing_key: str,
                properties: bytes, urgent: bool = False) -> None:
        """``properties``: encoded basic properties (``codec.encode_properties``)."""
        size: Any = getattr(channel, "max_content_size", 0) or 131072 - 8
        number: Any = channel.number
        key = (number, exchange, routing_key)
        method = self._methods.get(key)
        if method is None:
            if len(self._methods) > 10_000:
                self._methods.clear()
            method = self._methods[key] = codec.method_frame(number, _PUBLISH, (0, exchange, routing_key, False, False))
        parts = [method]
        codec.append_content(parts, number, properties, body, size)
        self.add(channel, b"".join(parts), urgent=urgent)

    def flush(self) -> None:
        self.soon = False
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        by_queue: dict[int, tuple[asyncio.Queue[Any], list[bytes]]] = {}
        for channel, frames in pending.items():
            if channel.is_closed:
                continue
            queue: Any = channel.write_queue  # type: ignore[attr-defined]
            entry = by_queue.setdefault(id(queue), (queue, []))
            entry[1].extend(frames)
        for queue, chunks in by_queue.values():
            frame = ChannelFrame(payload=b"".join(chunks), should_close=False)
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:  # the connection's writer is behind: wait for room, in order
                put = asyncio.ensure_future(queue.put(frame))
                self._puts.add(put)
                put.add_done_callback(self._puts.discard)


class StartedEvents:
    """The worker's deferred "started" events in the order their tasks started, with one loop timer for all of
    them (armed for the oldest) instead of a timer per task: each task costs a deque append, no timer heap
    push and cancel. An event that no longer needs to go (``StartedEvent.take``) stays in the deque until it
    reaches the front, where it is dropped."""

    def __init__(self) -> None:
        self.pending: deque[StartedEvent] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, started: StartedEvent) -> None:
        self.pending.append(started)
        if self.timer is None:
            self._arm(time.time())

    def _arm(self, now: float) -> None:
        pending = self.pending
        while pending and not pending[0].armed:
            pending.popleft()
        if pending:
            self.timer = asyncio.get_running_loop().call_later(max(0.0, pending[0].ts + STARTED_DELAY - now),
                                                               self._fire)

    def _fire(self) -> None:
        self.timer = None
        now = time.time()
        pending = self.pending
        due = now - STARTED_DELAY
        while pending and (not pending[0].armed or pending[0].ts <= due):
            started = pending.popleft()
            if started.armed:
                started.armed = False
                started.send()
        self._arm(now)

    def clear(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()


class StartedEvent:
    """A task's "started" event, published ``STARTED_DELAY`` seconds after the task started when no other event of
    the attempt went before then, with the ts of the start (``StartedEvents`` sends it when due).

    By default (``track_started`` false) a final event that goes before the delay takes the start along (its
    ``started`` field, ``take()``) and the "started" event never goes: one event per short task instead of two
    (measured: ~19 µs less of the broker's loop thread per no-op task, docs/performance.md), as Celery does
    unless ``track_started=True``. With ``track``, "started" always goes, just before the final event at the latest
    (``settle()``): in the same write, so that the broker's status book stores one record update for both."""

    __slots__ = ("armed", "ctx", "track", "ts", "worker")

    def __init__(self, worker: Jobs, ctx: TaskContext, track: bool, ts: float | None = None) -> None:
        """``ts``: when the task started (a handler thread's clock, read before the loop heard of it); now when
        not given."""
        self.worker = worker
        self.ctx = ctx
        self.track = track
        self.ts = time.time() if ts is None else ts
        self.armed = True  # "started" has not gone and may still go
        ctx.start_event = self
        worker.started_events.add(self)

    def send(self) -> None:
        self.worker.publish_event(self.ctx, "started", ts=self.ts)

    def settle(self) -> None:
        """The handler returned: with ``track``, the event goes now unless it went already. Without, it stays
        due: the final event takes the start along if it goes first, else "started" goes when due."""
        if self.armed and self.track:
            self.armed = False
            self.send()

    def take(self) -> float | None:
        """Another event of the attempt goes now: the start's ts for its ``started`` field when "started" has not
        gone (and now never will), else None."""
        if not self.armed:
            return None
        self.armed = False
        return self.ts
