"""Task ids carry their creation time (UUIDv7), and the status stream (the fallback on RabbitMQ) is read from
there instead of from the start of its retention; a read of an id that does not tell its time (or an older one)
rewinds the reader, and records stay right."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pika

from leveret.tasks import App
from leveret.tasks.app import EVENTS_EXCHANGE
from leveret.tasks.status import STREAM_MARGIN, StatusStream, id_time, new_task_id


def test_new_ids_are_uuid7_with_their_time() -> None:
    before = time.time()
    ids = [new_task_id() for _ in range(200)]
    after = time.time()
    for task_id in ids:
        assert len(task_id) == 32 and int(task_id, 16) >= 0
        parsed = uuid.UUID(task_id)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        created = id_time(task_id)
        assert created is not None and before - 0.002 <= created <= after + 0.002
    assert len(set(ids)) == 200
    assert [id_time(i) for i in ids] == sorted(id_time(i) for i in ids)  # type: ignore[type-var]
    assert id_time(uuid.uuid4().hex) is None
    assert id_time("not-an-id") is None and id_time("7" * 32) is None  # variant nibble "7": not a UUIDv7


def test_since_for() -> None:
    stream = StatusStream(ttl=3600)
    now = time.time()
    fresh = new_task_id()
    assert abs(stream.since_for([fresh], now) - (id_time(fresh) - STREAM_MARGIN)) < 1e-6  # type: ignore[operator]
    assert stream.since_for([], now) == now - 3600
    assert stream.since_for([fresh, uuid.uuid4().hex], now) == now - 3600  # one id without a time: everything
    old = f"{int((now - 7200) * 1000):012x}7{new_task_id()[13:]}"  # made two hours ago: beyond the retention
    assert id_time(old) is not None and stream.since_for([old], now) == now - 3600


def publish_event(port: int, ev: dict[str, Any]) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        body = {"attempt": 0, "ts": time.time(), "ttl": 60, **ev}
        conn.channel().basic_publish(EVENTS_EXCHANGE, f"{ev['task']}.{ev['state']}", json.dumps(body).encode(),
                                     pika.BasicProperties(content_type="application/json", message_id=ev["id"],
                                                          delivery_mode=1))
    finally:
        conn.close()


def test_stream_reader_starts_at_the_ids_time_and_rewinds(rabbitmq_port: int) -> None:
    queue = f"so-{uuid.uuid4().hex[:10]}"
    app = App(f"amqp://guest:guest@127.0.0.1:{rabbitmq_port}/", name="so", status_ttl=3600)
    try:
        @app.task(name="so.work", queue=queue)
        def work(i: int) -> None:
            return None

        handle = work.send(i=1)
        assert handle.status() == "queued"
        stream = app._link.stream
        assert stream is not None
        created = id_time(handle.id)
        assert created is not None and abs(stream.since - (created - STREAM_MARGIN)) < 1.0
        # An id with no time in it (a caller's own): the reader goes back to the start of the retention.
        own = uuid.uuid4().hex
        publish_event(rabbitmq_port, {"id": own, "task": "so.work", "queue": queue, "state": "succeeded"})
        assert app.status(own) == "succeeded"
        assert stream.since < time.time() - 3500
        assert app._link.stream is stream
        # Records read before the rewind are still right, and later events still arrive.
        assert handle.status() == "queued"
        publish_event(rabbitmq_port, {"id": handle.id, "task": "so.work", "queue": queue, "state": "started"})
        deadline = time.monotonic() + 10
        while handle.status() != "started":
            assert time.monotonic() < deadline, "the started event was not seen"
            time.sleep(0.05)
    finally:
        app.close()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", rabbitmq_port))
        for q in (queue, f"{queue}.dead"):
            conn.channel().queue_delete(q)
        conn.close()
