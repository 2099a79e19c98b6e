"""The forwarder's STOMP transport (leveret/outbox/stomp_transport.py) on Leveret's STOMP listener and on RabbitMQ's
STOMP plugin (``stomp_broker``: skipped when RabbitMQ or its plugin is absent): properties and headers through the
mapping of docs/stomp.md, exchange destinations, a missing exchange parked, a refused publish on RabbitMQ kept and
sent again in order. The outage and nack tests of every transport are in test_outbox.py (``transport``)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.outbox import Forwarder, open_outbox, stomp_transport
from leveret.outbox.message import OutboxMessage, encode_properties
from leveret.outbox.stomp_transport import destination, send_frame

from serverproc import LeveretProcess
from waiting import hold, wait_for

pytestmark = pytest.mark.timeout(120)


def stomp_url(port: int) -> str:
    return f"stomp://guest:guest@127.0.0.1:{port}/"


def test_rows_become_send_frames() -> None:
    assert destination("", "work") == "/amq/queue/work"
    assert destination("amq.direct", "a/b") == "/exchange/amq.direct/a%2Fb"
    assert destination("logs", "") == "/exchange/logs"
    with pytest.raises(ValueError):
        destination("", "")
    header, message_id = encode_properties({"content_type": "text/plain", "priority": 3, "correlation_id": "c",
                                            "reply_to": "replies", "timestamp": 1700000000, "type": "t",
                                            "headers": {"n": 7, "b": b"text", "ok": True}})
    frame = send_frame(OutboxMessage(5, "", "work", True, header, b"\x00body"))
    assert frame.command == "SEND" and frame.body == b"\x00body"
    headers = dict(frame.headers)
    assert headers["destination"] == "/amq/queue/work" and headers["receipt"] == "5"
    assert headers["persistent"] == "true" and headers["amqp-message-id"] == message_id
    assert (headers["content-type"], headers["priority"], headers["correlation-id"], headers["reply-to"],
            headers["timestamp"], headers["type"]) == ("text/plain", "3", "c", "replies", "1700000000", "t")
    assert (headers["n"], headers["b"], headers["ok"], headers["x-deduplication-header"]) == ("7", "text", "true",
                                                                                                message_id)
    for bad in ({"b": b"\xff"}, {"receipt": "x"}, {"t": {"nested": 1}}):
        header, _ = encode_properties({"headers": bad})
        with pytest.raises(ValueError):
            send_frame(OutboxMessage(1, "", "q", True, header, b""))


def test_stomp_forwarding_keeps_properties_and_parks_a_missing_exchange(tmp_path: Path,
                                                                        stomp_broker: tuple[int, int],
                                                                        unique: str) -> None:
    amqp_port, stomp_port = stomp_broker
    ch = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port)).channel()
    ch.queue_declare(unique, durable=True)
    ch.queue_bind(unique, "amq.direct", routing_key=f"{unique}-key")
    outbox = open_outbox(str(tmp_path / "o.db"))
    forwarder = Forwarder(outbox, [stomp_url(stomp_port)], backoff_initial=0.1, backoff_max=0.3,
                          unroutable_retry=3600).start()
    stamp = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    try:
        ids = [outbox.send("", unique, b"direct\x00binary", properties={
            "content_type": "application/octet-stream", "correlation_id": "corr", "priority": 4,
            "timestamp": stamp, "headers": {"kind": "welcome", "n": 3}})]
        outbox.send(f"{unique}-no-such-exchange", "k", b"nowhere")
        ids.append(outbox.send("amq.direct", f"{unique}-key", b"through amq.direct"))
        wait_for(lambda: outbox.count() == 1, 30, "two forwarded, one parked")
        status = outbox.status()["default"]
        assert status["parked"] == 1 and "no exchange" in status["last_error"]
        got: list[tuple[Any, bytes]] = []
        deadline = time.monotonic() + 30
        while b"through amq.direct" not in [body for _, body in got] and time.monotonic() < deadline:
            method, props, body = ch.basic_get(unique, auto_ack=True)
            if method is None:
                time.sleep(0.05)
            else:
                got.append((props, body))
        # each may come twice: a RECEIPT can be lost with the connection the ERROR about the second closes, and
        # RabbitMQ's plugin goes on with the third after that ERROR (at-least-once after an ERROR, as after an AMQP
        # channel error)
        assert list(dict.fromkeys(body for _, body in got)) == [b"direct\x00binary", b"through amq.direct"]
        assert len(got) <= 4
        props = got[0][0]
        assert props.message_id == ids[0] and got[-1][0].message_id == ids[1]
        assert (props.content_type, props.correlation_id, props.priority, props.delivery_mode, props.timestamp) == (
            "application/octet-stream", "corr", 4, 2, int(stamp.timestamp()))
        # STOMP headers are text: the integer arrives as a string. Both brokers also keep the SEND's receipt and
        # content-length in the table, as RabbitMQ's plugin does (docs/stomp.md).
        assert props.headers["kind"] == "welcome" and props.headers["n"] == "3"
        assert props.headers["x-deduplication-header"] == ids[0]
    finally:
        forwarder.stop()
        outbox.close()
        ch.queue_delete(unique)
        ch.connection.close()


def test_stomp_transport_sends_refused_messages_again_in_order(tmp_path: Path, stomp_broker: tuple[int, int],
                                                                unique: str) -> None:
    """A full reject-publish queue: RabbitMQ's plugin closes the connection without a RECEIPT for what was
    refused (nor for what it stored in the same window); Leveret answers an ERROR "Message refused" for the refused
    SEND and closes. Either way those messages stay in the outbox and are sent again, one at a time, until there
    is room: nothing is lost, first occurrences arrive in order, and only messages of the first window can come
    twice."""
    amqp_port, stomp_port = stomp_broker
    ch = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port)).channel()
    ch.queue_declare(unique, durable=True, arguments={"x-max-length": 5, "x-overflow": "reject-publish"})
    outbox = open_outbox(str(tmp_path / "o.db"))
    forwarder = Forwarder(outbox, [stomp_url(stomp_port)], backoff_initial=0.1, backoff_max=0.3).start()
    try:
        for i in range(12):
            outbox.send("", unique, b"%d" % i)
        wait_for(lambda: ch.queue_declare(unique, passive=True).method.message_count == 5, 30, "the queue full")
        wait_for(lambda: forwarder.snapshot()["default"]["error"], 10, "a refusal")
        assert outbox.count() >= 7
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(set(got)) < 12 and time.monotonic() < deadline:
            method, _, body = ch.basic_get(unique, auto_ack=True)
            if method is None:
                time.sleep(0.05)
            else:
                got.append(body)
        assert list(dict.fromkeys(got)) == [b"%d" % i for i in range(12)]
        # all 12 were in the first window: each may come twice (its RECEIPT lost when the plugin closed the
        # connection), not more
        assert max(got.count(body) for body in got) <= 2
        wait_for(lambda: outbox.count() == 0, 30, "outbox empty")
    finally:
        forwarder.stop()
        outbox.close()
        ch.queue_delete(unique)
        ch.connection.close()


def test_heart_beats_keep_an_idle_connection(tmp_path: Path, stomp_server: Any, unique: str,
                                             monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Both ways at 1 s: Leveret closes a connection silent for two of the client's intervals, so an idle
    forwarder that did not beat would lose its connection (a warning, a reconnection)."""
    monkeypatch.setattr(stomp_transport, "HEARTBEAT_MS", 1000)
    assert stomp_transport._heartbeats("1000,1000") == (1.0, 1.0)
    assert stomp_transport._heartbeats("0,0") == (0.0, 0.0)
    ch = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", stomp_server.port)).channel()
    ch.queue_declare(unique, durable=True)
    outbox = open_outbox(str(tmp_path / "o.db"))
    forwarder = Forwarder(outbox, [stomp_url(stomp_server.stomp_port)]).start()
    try:
        outbox.send("", unique, b"first")
        wait_for(lambda: outbox.count() == 0, 30, "the first forwarded")
        hold(3.5, "idle for three heart-beat intervals")
        outbox.send("", unique, b"second")
        wait_for(lambda: outbox.count() == 0, 30, "the second forwarded")
    finally:
        forwarder.stop()
        outbox.close()
        ch.connection.close()
    assert not [r for r in caplog.records if r.name == "leveret.outbox.forwarder" and r.levelname == "WARNING"]


def test_a_broker_lost_while_idle_is_noticed_without_a_send(tmp_path: Path) -> None:
    broker = LeveretProcess(tmp_path / "broker", env={"LEVERET_STOMP_PORT": "0"}).start()
    outbox = open_outbox(str(tmp_path / "o.db"))
    forwarder = Forwarder(outbox, [stomp_url(broker.stomp_port)], backoff_initial=0.1, backoff_max=0.3).start()
    try:
        wait_for(lambda: forwarder.snapshot()["default"]["url"], 30, "connected")
        broker.stop()
        wait_for(lambda: forwarder.snapshot()["default"]["error"], 30, "the lost connection noticed")
        assert forwarder.snapshot()["default"]["url"] is None
    finally:
        forwarder.stop()
        outbox.close()
        broker.kill()
