"""Reading task status (docs/tasks.md, "Job status"), without a queue per task.

- On Leveret with the broker's status book (exchange ``amq.leveret.status``): ``StatusBook`` asks the broker,
  several ids per query, over the App's RPC channel (direct reply-to). The broker records "queued" itself
  (work queues carry ``x-leveret-status``) and every later state from the events on ``leveret.events``.
- Elsewhere (RabbitMQ): ``StatusStream`` tails one stream queue ``leveret.status`` bound to ``leveret.events``
  (the producer publishes "queued" there itself) with one consumer per App, into a bounded id -> record cache.
  A read first publishes a marker to the stream and waits until the consumer has seen it, so it sees every
  event the broker had taken before the read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq

from leveret.tasks.topology import EVENTS_EXCHANGE, REPLY_TO, STATUS_EXCHANGE, STATUS_STREAM

RANK = {"queued": 0, "started": 1, "retrying": 2, "failed": 3, "succeeded": 4, "gave_up": 4, "revoked": 4}
FINAL_STATES = frozenset({"succeeded", "gave_up", "revoked"})
MAX_RESULT_BYTES = 65_536  # bytes of JSON: a larger result is not kept in the status record (contract)
STATES = tuple(RANK)
MARKER_TYPE = "leveret.sync"  # stream markers (StatusStream.sync); not events
DEFAULT_STATUS_TTL = 86_400.0
STREAM_SEGMENT_BYTES = 2_000_000
FIRST_REPLAY_TIMEOUT = 120.0  # seconds the first status read may wait while the status stream is replayed
STREAM_MARGIN = 300.0  # the stream is read from this long before the oldest id's creation (clocks of hosts differ)


def new_task_id() -> str:
    """A new task id: a UUIDv7 (RFC 9562) as 32 hex digits, its creation time (ms) in the first 12, so a reader
    of the status stream knows where in the stream its events start (:func:`id_time`)."""
    return time_ordered_id(time.time(), os.urandom(10))


def time_ordered_id(at: float, entropy: bytes) -> str:
    """A UUIDv7 for time ``at`` (epoch seconds) whose other 74 bits come from ``entropy`` (10 bytes or more):
    random for a new task, a hash for an id every scheduler must agree on (periodic tasks)."""
    ms = int(at * 1000) & 0xFFFF_FFFF_FFFF
    rand = int.from_bytes(entropy[:10], "big")
    value = ms << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    return f"{value:032x}"


def id_time(task_id: str) -> float | None:
    """The creation time (epoch seconds) of an id made by :func:`new_task_id`; None for any other id (a uuid4,
    an id given by the caller)."""
    if len(task_id) != 32 or task_id[12] != "7" or task_id[16] not in "89ab":
        return None
    try:
        return int(task_id[:12], 16) / 1000
    except ValueError:
        return None


class StatusUnavailable(RuntimeError):
    """The broker keeps no task status that this App can read (Leveret without its status book)."""


def event(task_id: str, task: str, queue: str, state: str, ttl: float, attempt: int = 0,
          **extra: Any) -> dict[str, Any]:
    """A task event as the contract defines it (published to ``leveret.events``, key ``<task>.<state>``)."""
    return {"id": task_id, "task": task, "queue": queue, "state": state, "attempt": attempt, "ts": time.time(),
            "ttl": ttl, **extra}


def event_message(body: dict[str, Any]) -> tuple[bytes, aiormq.spec.Basic.Properties]:
    return json.dumps(body).encode(), aiormq.spec.Basic.Properties(
        content_type="application/json", message_id=body["id"], delivery_mode=1)


def merge(record: dict[str, Any] | None, ev: dict[str, Any]) -> dict[str, Any]:
    """The record after event ``ev``: the event with the highest (attempt, rank) wins, a tie goes to the
    later ts; timestamps ("created", "started", "finished") accumulate (a final event's ``started`` field counts
    as a "started" event at that time)."""
    ts = float(ev.get("ts") or time.time())
    state = str(ev.get("state", ""))
    key = (int(ev.get("attempt") or 0), RANK.get(state, -1), ts)
    if record is None:
        record = {"id": ev.get("id"), "task": ev.get("task"), "queue": ev.get("queue"), "state": state,
                  "attempt": key[0], "created": ts, "updated": ts, "started": None, "finished": None,
                  "error": None, "_key": (-1, -1, 0.0), "_ttl": float(ev.get("ttl") or DEFAULT_STATUS_TTL)}
    record["created"] = min(record["created"], ts)
    # The start of the attempt: a "started" event's ts, or the ``started`` field of a final event that went alone
    # (the attempt ended before its "started" event was due; docs/tasks.md, "Events").
    start = ts if state == "started" else ev.get("started")
    if start.__class__ in (int, float) and math.isfinite(start):
        record["created"] = min(record["created"], start)
        if record["started"] is None or start > record["started"]:
            record["started"] = start
    if key >= record["_key"]:
        record.update(state=state, attempt=key[0], updated=ts, _key=key,
                      _ttl=float(ev.get("ttl") or record["_ttl"]))
        for field in ("task", "queue"):
            record[field] = ev.get(field) or record[field]
        record["error"] = ev.get("error")
        for field in ("result", "next_attempt_at", "worker"):
            if field in ev:
                record[field] = ev[field]
            else:
                record.pop(field, None)
        if state in FINAL_STATES:
            record["finished"] = ts
    return record


def public(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record without the bookkeeping fields; None when absent or expired."""
    if record is None:
        return None
    if "_ttl" in record and record["updated"] + record["_ttl"] < time.time():
        return None
    return {k: v for k, v in record.items() if not k.startswith("_")}


class StatusBook:
    """Client of Leveret's status book: ``{"ids": [...]}`` to ``amq.leveret.status``, answered on direct
    reply-to. Reads that arrive together (same loop iteration) share one query."""

    def __init__(self, rpc_channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = rpc_channel
        self.pending: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self.queries: dict[str, tuple[list[str], dict[str, list[asyncio.Future[Any]]]]] = {}
        self.flush_scheduled = False

    async def read(self, task_id: str) -> dict[str, Any] | None:
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self.pending.setdefault(task_id, []).append(future)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        self.flush_scheduled = False
        waiting, self.pending = self.pending, {}
        if not waiting:
            return
        cid = "status-" + uuid.uuid4().hex
        self.queries[cid] = (list(waiting), waiting)
        try:
            await self.channel.basic_publish(
                json.dumps({"ids": list(waiting)}).encode(), exchange=STATUS_EXCHANGE, routing_key="",
                properties=aiormq.spec.Basic.Properties(content_type="application/json", reply_to=REPLY_TO,
                                                        correlation_id=cid))
        except Exception as exc:
            self.queries.pop(cid, None)
            self.fail(waiting, exc)

    def on_reply(self, cid: str, body: bytes) -> bool:
        """Give a reply to its query; False when ``cid`` is not a status query of ours."""
        query = self.queries.pop(cid, None)
        if query is None:
            return False
        _, waiting = query
        try:
            answer = json.loads(body)
            records = answer["records"]
        except (ValueError, KeyError, TypeError):
            self.fail(waiting, StatusUnavailable(f"the status book answered {body[:200]!r}"))
            return True
        for task_id, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(records.get(task_id))
        return True

    def fail(self, waiting: dict[str, list[asyncio.Future[Any]]], exc: BaseException) -> None:
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc)

    def close(self, exc: BaseException) -> None:
        for _, waiting in self.queries.values():
            self.fail(waiting, exc)
        self.queries.clear()
        self.fail(self.pending, exc)
        self.pending = {}


class StatusStream:
    """The fallback where the broker keeps no status: tail the stream ``leveret.status`` into a bounded cache.

    The consumer only files each event's body under its ``message_id`` (the task id); bodies are decoded and
    merged when that id is read (or waited for), so replaying a long stream costs little per event."""

    def __init__(self, ttl: float, max_records: int = 100_000) -> None:
        self.ttl = ttl
        self.max_records = max_records
        # task id -> [merged record or None, bodies not merged yet]
        self.entries: OrderedDict[str, tuple[list[dict[str, Any] | None], list[bytes]]] = OrderedDict()
        self.markers: dict[str, asyncio.Future[None]] = {}
        self.offset: int | None = None  # the last stream offset seen, to resume after a reconnection
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.sync_task: asyncio.Future[None] | None = None
        self.watchers: dict[str, list[asyncio.Future[None]]] = {}  # ids someone waits to see finish
        self.caught_up = False
        self.since = 0.0  # the epoch time the consumer started reading the stream from

    @staticmethod
    def arguments(ttl: float) -> dict[str, Any]:
        # Small segments: a stream drops whole segments only, so with the default (500 MB) nothing would expire.
        return {"x-queue-type": "stream", "x-max-age": f"{max(1, int(ttl))}s",
                "x-stream-max-segment-size-bytes": STREAM_SEGMENT_BYTES}

    async def declare(self, conn: aio_pika.abc.AbstractConnection) -> None:
        """Declare the stream (or accept the one there, whatever its max-age) and bind it to the events."""
        channel = await conn.channel()
        try:
            try:
                queue = await channel.declare_queue(STATUS_STREAM, durable=True, arguments=self.arguments(self.ttl))
            except aiormq.exceptions.ChannelPreconditionFailed:  # declared by an App with another status_ttl
                channel = await conn.channel()
                queue = await channel.declare_queue(STATUS_STREAM, passive=True)
            events = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
            await queue.bind(events, routing_key="#")
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    def since_for(self, ids: list[str], now: float | None = None) -> float:
        """Where in the stream (epoch seconds) the events of ``ids`` start: ``STREAM_MARGIN`` before the oldest
        one's creation time; ``status_ttl`` ago (the whole retention) when an id does not tell its time."""
        now = time.time() if now is None else now
        floor = now - self.ttl
        if not ids:
            return floor
        oldest = now
        for task_id in ids:
            created = id_time(task_id)
            if created is None or not floor - STREAM_MARGIN <= created <= now + STREAM_MARGIN:
                return floor
            oldest = min(oldest, created)
        return max(floor, oldest - STREAM_MARGIN)

    async def start(self, conn: aio_pika.abc.AbstractConnection, since: float | None = None) -> None:
        """Consume the stream from where this App left off; the first time from ``since`` (epoch seconds;
        default: status_ttl ago, as an older event's record would have expired anyway)."""
        if self.offset is None:
            self.since = max(time.time() - self.ttl, since if since is not None else 0.0)
        self.channel = await (await conn.channel()).get_underlay_channel()
        await self.channel.basic_qos(prefetch_count=2000)
        offset: Any = (datetime.fromtimestamp(self.since, UTC) if self.offset is None else self.offset + 1)
        await self.channel.basic_consume(STATUS_STREAM, self._on_message, no_ack=False,
                                         arguments={"x-stream-offset": offset})

    async def rewind(self, conn: aio_pika.abc.AbstractConnection, since: float) -> None:
        """Read the stream again from ``since`` (earlier than where it started): a read asked for an id older
        than that. Events seen twice merge to the same record."""
        channel, self.channel = self.channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
        self.offset = None
        self.caught_up = False
        await self.start(conn, since)

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        props = message.header.properties
        offset = (props.headers or {}).get("x-stream-offset")
        if isinstance(offset, int):
            self.offset = offset
        task_id = props.message_id
        if props.message_type == MARKER_TYPE:
            marker = self.markers.pop(task_id or "", None)
            if marker is not None and not marker.done():
                marker.set_result(None)
        elif task_id:
            entry = self.entries.get(task_id)
            if entry is None:
                entry = self.entries[task_id] = ([None], [])
                if len(self.entries) > self.max_records:
                    self.entries.popitem(last=False)
            else:
                self.entries.move_to_end(task_id)
            entry[1].append(message.body)
            if task_id in self.watchers:
                record = self._record(task_id)
                if record is not None and record["state"] in FINAL_STATES:
                    for future in self.watchers.pop(task_id, ()):
                        if not future.done():
                            future.set_result(None)
        # Acks on a stream only move the consumer's credit window: one (multiple) ack per 500 is enough.
        tag = message.delivery_tag
        if tag is not None and tag % 500 == 0 and self.channel is not None:
            await self.channel.basic_ack(tag, multiple=True)

    def _record(self, task_id: str) -> dict[str, Any] | None:
        entry = self.entries.get(task_id)
        if entry is None:
            return None
        holder, bodies = entry
        for body in bodies:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                ev = json.loads(body)
                if isinstance(ev, dict):
                    holder[0] = merge(holder[0], ev)
        bodies.clear()
        return public(holder[0])

    async def wait_final(self, publish_raw: aiormq.abc.AbstractChannel, task_id: str,
                         timeout: float) -> dict[str, Any] | None:
        """The record once the task is done (no polling: the consumer wakes the waiter), or the last known
        record after ``timeout`` seconds."""
        record = await self.read(publish_raw, task_id, timeout)
        if record is not None and record["state"] in FINAL_STATES:
            return record
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.watchers.setdefault(task_id, []).append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            waiting = self.watchers.get(task_id, [])
            if future in waiting:
                waiting.remove(future)
                if not waiting:
                    self.watchers.pop(task_id, None)
        return self._record(task_id)

    async def read(self, publish_raw: aiormq.abc.AbstractChannel, task_id: str,
                   timeout: float) -> dict[str, Any] | None:
        await self.sync(publish_raw, timeout)
        return self._record(task_id)

    async def sync(self, publish_raw: aiormq.abc.AbstractChannel, timeout: float) -> None:
        """Wait until the consumer has seen a marker published now (reads that overlap share one)."""
        if self.sync_task is None or self.sync_task.done():
            if not self.caught_up:  # the first read replays the stream: give it time (docs/tasks.md)
                timeout = max(timeout, FIRST_REPLAY_TIMEOUT)
            self.sync_task = asyncio.ensure_future(self._sync(publish_raw, timeout))
        await asyncio.shield(self.sync_task)

    async def _sync(self, publish_raw: aiormq.abc.AbstractChannel, timeout: float) -> None:
        marker = uuid.uuid4().hex
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.markers[marker] = future
        try:
            await publish_raw.basic_publish(b"", exchange="", routing_key=STATUS_STREAM,
                                            properties=aiormq.spec.Basic.Properties(message_type=MARKER_TYPE,
                                                                                    message_id=marker))
            await asyncio.wait_for(future, timeout)
            self.caught_up = True
        except TimeoutError:
            raise TimeoutError(f"the status stream {STATUS_STREAM} did not catch up within {timeout:g} s "
                               "(a long stream is replayed at the first read: see docs/tasks.md)") from None
        finally:
            self.markers.pop(marker, None)


class TaskError(Exception):
    """A task's handler raised (it gave up): ``remote_type`` and ``remote_message`` are the remote exception's."""

    def __init__(self, remote_type: str, remote_message: str, task_id: str | None = None,
                 traceback: str | None = None) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.task_id = task_id
        self.traceback = traceback
