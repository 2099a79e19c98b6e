"""The fast path of send() (leveret/tasks/fastpub.py): task messages framed with Leveret's codec and written to
aiormq's write queue, confirms tracked in aiormq's table. On Leveret and on RabbitMQ: what arrives is what the
old path sent (properties, bodies cut in frames, binary payloads), and fast sends mixed with aiormq's own
publishes on the same channel (delayed sends, revoke), from threads and from other event loops, are all
confirmed and all arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from leveret.amqp import codec
from leveret.tasks import App
from leveret.tasks.fastpub import Waiter


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


@pytest.fixture
def queue_name(broker_port: int) -> Iterator[str]:
    name = f"fp-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port))
        for q in (name, f"{name}.dead", f"{name}.retry.100"):
            conn.channel().queue_delete(q)
        conn.close()


def drain(port: int, queue: str, expect: int, timeout: float = 15.0) -> list[Any]:
    """Take ``expect`` messages of ``queue`` (polling until they are all there or ``timeout``)."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        ch = conn.channel()
        while len(got) < expect and time.monotonic() < deadline:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.02)
                continue
            got.append((props, body))
        return got
    finally:
        conn.close()


def test_encoded_header_matches_pamqp() -> None:
    """The properties the fast path encodes decode to what was meant (Leveret's codec, RabbitMQ's names)."""
    props = {"content_type": "application/json", "delivery_mode": 2, "priority": 3, "correlation_id": "c",
             "message_id": "m", "timestamp": 1_800_000_000, "type": "t.x", "headers": {"x-a": "1"}}
    assert codec.decode_properties(codec.encode_properties(props)) == props


def test_waiter() -> None:
    waiter = Waiter()
    assert not waiter.wait(0.01)
    threading.Timer(0.01, waiter.set, args=("v", None)).start()
    assert waiter.wait(5) and waiter.value == "v" and waiter.error is None


def test_fast_sends_arrive_as_sent(broker_port: int, queue_name: str) -> None:
    """Properties, a body larger than a frame, a binary payload; and the fast path is the one taken."""
    app = App(url(broker_port), name="fp", status_ttl=60)
    slow: list[Any] = []
    original = app._slow
    app._slow = lambda item: (slow.append(item), original(item))  # type: ignore[method-assign]
    try:
        @app.task(name="fp.work", queue=queue_name, priority=3, status=False)
        def work(text: str) -> None:
            return None

        work.send(text="first")  # declares the queue on this connection (the slow path, once)
        big = "x" * 300_000  # more than RabbitMQ's and Leveret's frame_max (131072): several body frames
        before = len(slow)
        h_big = work.send(text=big)
        h_bin = work.send_bytes(b"\x00\x01binary\xff")
        assert len(slow) == before, "the fast path was not taken"
        got = drain(broker_port, queue_name, 3)
        assert len(got) == 3
        by_id = {p.message_id: (p, b) for p, b in got}
        props, body = by_id[h_big.id]
        assert json.loads(body)["payload"] == {"text": big}
        assert (props.type, props.correlation_id, props.content_type, props.delivery_mode, props.priority) == (
            "fp.work", h_big.id, "application/json", 2, 3)
        assert abs(props.timestamp - time.time()) < 120
        props, body = by_id[h_bin.id]
        assert body == b"\x00\x01binary\xff" and props.content_type == "application/octet-stream"
        assert json.loads(props.headers["x-leveret-task"]) == "fp.work"
    finally:
        app.close()


def test_fast_and_slow_sends_mixed_on_one_channel(broker_port: int, queue_name: str) -> None:
    """Threads sending (the pump batches them), another event loop's send_async, multicast, delayed sends (aiormq's
    basic_publish on the same confirm channel) and revokes, all at once: every send returns confirmed, every
    message arrives once."""
    app = App(url(broker_port), name="fp-mixed", status_ttl=60)
    try:
        @app.task(name="fp.mixed", queue=queue_name)
        def work(i: int) -> None:
            return None

        work.send(i=-1)
        ids: list[str] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def record(handles: list[Any]) -> None:
            with lock:
                ids.extend(h.id for h in handles)

        def threads_send(base: int) -> None:
            try:
                for i in range(60):
                    record([work.send(i=base + i)])
                    if i % 20 == 0:
                        record([work.send_with({"i": base + i}, delay=0.1)])
                        app.revoke(uuid.uuid4().hex)
            except BaseException as exc:
                errors.append(exc)

        def loop_send() -> None:
            async def go() -> None:
                record(list(await asyncio.gather(*(work.send_async(i=1000 + i) for i in range(100)))))
            try:
                asyncio.run(go())
            except BaseException as exc:
                errors.append(exc)

        def multicast() -> None:
            try:
                for k in range(3):
                    record(app.multicast([work.request(i=2000 + 50 * k + i) for i in range(50)]).handles)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=threads_send, args=(100 * k,)) for k in range(3)]
        workers += [threading.Thread(target=loop_send), threading.Thread(target=multicast)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
        assert not errors, errors
        assert len(ids) == 3 * 60 + 3 * 3 + 100 + 150
        got = drain(broker_port, queue_name, len(ids) + 1)
        assert sorted(p.message_id for p, _ in got) == sorted([*ids, got_first_id(got, ids)])
    finally:
        app.close()


def got_first_id(got: list[Any], ids: list[str]) -> str:
    """The warm-up send's id: the one message not among ``ids``."""
    extra = [p.message_id for p, _ in got if p.message_id not in set(ids)]
    assert len(extra) == 1, extra
    return extra[0]


def test_fast_sends_are_queued_in_the_status(broker_port: int, queue_name: str) -> None:
    """A fast-path send has its "queued" record: on Leveret the broker's, on RabbitMQ the event the fast path
    writes to leveret.events in the same piece as the task message."""
    app = App(url(broker_port), name="fp-status", status_ttl=60)
    slow: list[Any] = []
    original = app._slow
    app._slow = lambda item: (slow.append(item), original(item))  # type: ignore[method-assign]
    try:
        @app.task(name="fp.status", queue=queue_name)
        def work(i: int) -> None:
            return None

        work.send(i=0)
        before = len(slow)
        handles = [work.send(i=i) for i in range(1, 4)]
        assert len(slow) == before, "the fast path was not taken"
        for handle in handles:
            info = handle.info()
            assert (info["state"], info["task"], info["queue"]) == ("queued", "fp.status", queue_name)
    finally:
        app.close()
