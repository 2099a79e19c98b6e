"""Leveret's own queue features: retry schedules (x-retry-intervals) and x-delivery-limit on classic queues."""

from __future__ import annotations

import time
from pathlib import Path

import pika

from leveret.node import ThreadedServer

from serverproc import LeveretProcess


def _get(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, timeout: float = 5.0) -> tuple:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ch.basic_get(queue)
        if got[0] is not None:
            return got
        ch.connection.sleep(0.005)
    raise AssertionError(f"nothing arrived in {queue} within {timeout} s")


def test_retry_intervals_redeliver_on_schedule_then_dead_letter(leveret: ThreadedServer) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leveret.port))
    ch = conn.channel()
    ch.exchange_declare("failed", "fanout")
    ch.queue_declare("failed-jobs")
    ch.queue_bind("failed-jobs", "failed")
    ch.queue_declare("jobs", arguments={"x-retry-intervals": [100, 200, 300], "x-dead-letter-exchange": "failed"})
    ch.basic_publish("", "jobs", b"send email", pika.BasicProperties(headers={"task": "email"}))
    started = time.monotonic()
    attempts = []
    for _ in range(4):
        method, props, body = _get(ch, "jobs")
        attempts.append((time.monotonic() - started, (props.headers or {}).get("x-retry-count"), body))
        ch.basic_nack(method.delivery_tag, requeue=False)
    assert [a[1] for a in attempts] == [None, 1, 2, 3]
    assert all(a[2] == b"send email" for a in attempts)
    gaps = [attempts[i + 1][0] - attempts[i][0] for i in range(3)]
    for gap, interval in zip(gaps, (0.1, 0.2, 0.3), strict=True):
        assert interval - 0.005 <= gap <= interval + 0.15, gaps
    _method, props, body = _get(ch, "failed-jobs")
    assert body == b"send email"
    assert props.headers["x-retry-count"] == 3 and props.headers["task"] == "email"
    assert props.headers["x-death"][0]["reason"] == "retries_exhausted"
    assert props.headers["x-first-death-reason"] == "retries_exhausted"
    conn.close()


def test_requeue_true_is_not_a_retry(leveret: ThreadedServer) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leveret.port))
    ch = conn.channel()
    ch.queue_declare("jobs2", arguments={"x-retry-intervals": [5000]})
    ch.basic_publish("", "jobs2", b"x")
    method, _props, _body = _get(ch, "jobs2")
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, props, _body = _get(ch, "jobs2", timeout=1)
    assert method.redelivered and props.headers is None
    conn.close()


def test_retry_survives_a_crash(tmp_path: Path) -> None:
    server = LeveretProcess(tmp_path / "data").start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("durable-jobs", durable=True, arguments={"x-retry-intervals": [1500]})
        ch.basic_publish("", "durable-jobs", b"persist me", pika.BasicProperties(delivery_mode=2))
        method, _props, _body = _get(ch, "durable-jobs")
        ch.basic_reject(method.delivery_tag, requeue=False)
        ch.queue_declare("durable-jobs", passive=True)  # a round trip: the reject was processed
        time.sleep(0.2)  # let the group commit of the scheduled retry land
        rejected_at = time.monotonic()
        server.kill()
        server.start()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        ch = conn.channel()
        _method, props, body = _get(ch, "durable-jobs", timeout=5)
        assert body == b"persist me" and props.headers["x-retry-count"] == 1
        assert time.monotonic() - rejected_at >= 1.2
        conn.close()
    finally:
        server.kill()


def test_delivery_limit_dead_letters_after_too_many_redeliveries(leveret: ThreadedServer) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leveret.port))
    ch = conn.channel()
    ch.exchange_declare("poison", "fanout")
    ch.queue_declare("poison-q")
    ch.queue_bind("poison-q", "poison")
    ch.queue_declare("limited", arguments={"x-delivery-limit": 2, "x-dead-letter-exchange": "poison"})
    ch.basic_publish("", "limited", b"bad input")
    deliveries = 0
    for _ in range(3):
        method, _props, _body = _get(ch, "limited", timeout=1)
        deliveries += 1
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert deliveries == 3
    assert ch.basic_get("limited")[0] is None
    _method, props, body = _get(ch, "poison-q")
    assert body == b"bad input" and props.headers["x-death"][0]["reason"] == "delivery_limit"
    conn.close()
