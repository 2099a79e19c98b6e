"""Leveret's own queue features end to end: a retry schedule (x-retry-intervals) survives a crash. The schedule
itself, requeue vs. retry and x-delivery-limit on classic queues are tested on the core with a manual clock in
``unit/test_core_lifecycle.py``."""

from __future__ import annotations

import time
from pathlib import Path

import pika

from serverproc import LeveretProcess
from waiting import poll


def _get(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, timeout: float = 5.0) -> tuple:  # type: ignore[type-arg]
    got = poll(lambda: ch.basic_get(queue), lambda got: got[0] is not None, timeout, 0.005)
    assert got[0] is not None, f"nothing arrived in {queue} within {timeout} s"
    return got


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
        # a persistent message confirmed after the reject: its confirm comes once everything before it is written,
        # the scheduled retry included (one group commit, in order)
        ch.queue_declare("marker", durable=True)
        ch.basic_publish("", "marker", b"", pika.BasicProperties(delivery_mode=2))
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
