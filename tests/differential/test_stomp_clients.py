"""PHP's STOMP client (pecl stomp: Debian's php-stomp) and pika exchanging messages both ways on one broker, with
properties intact: tests/clients/php/stomp_roundtrip.php is the PHP side (SEND with receipts and a transaction;
SUBSCRIBE with client-individual acks), this module the AMQP side. Each test runs once against Leveret and once
against RabbitMQ's STOMP plugin (``stomp_broker``), which proves the script and the expectations right; the
RabbitMQ run is skipped when its plugin is absent, and both when PHP or its stomp extension is not installed
(``bash scripts/install-test-deps.sh`` installs them)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from test_other_clients import CLIENTS, HOST, require, run_client, which

from waiting import poll

COUNT = 3
SCRIPT = CLIENTS / "php/stomp_roundtrip.php"


@pytest.fixture
def php_stomp() -> str:
    php = which("php", "PHP (Debian package php-cli)")
    probe = subprocess.run([php, "-r", "exit(class_exists('Stomp') ? 0 : 1);"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30, check=False)
    require(probe.returncode == 0, "PHP's stomp extension (Debian package php-stomp)")
    return php


@pytest.fixture
def amqp(stomp_broker: tuple[int, int], unique: str) -> Iterator[BlockingChannel]:
    """A pika channel on the broker's AMQP port; the test's queues are deleted afterwards."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, stomp_broker[0], heartbeat=0))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            ch = conn.channel()
            for suffix in ("to-amqp", "to-php"):
                ch.queue_delete(f"{unique}.{suffix}")
            conn.close()


def get_all(ch: BlockingChannel, queue: str, count: int) -> list[tuple[pika.spec.Basic.GetOk, pika.BasicProperties,
                                                                         bytes]]:
    """basic.get (auto-ack) until ``count`` messages were read (or a bounded wait found no more)."""
    got: list[tuple[pika.spec.Basic.GetOk, pika.BasicProperties, bytes]] = []

    def one_more() -> bool:
        method, properties, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            got.append((method, properties, body))
        return len(got) >= count

    poll(one_more, bool, timeout=10, interval=0.02)
    return got


def test_php_stomp_to_pika(php_stomp: str, stomp_broker: tuple[int, int], amqp: BlockingChannel,
                           unique: str) -> None:
    run_client([php_stomp, SCRIPT, "produce", HOST, str(stomp_broker[1]), unique], "php stomp")
    messages = get_all(amqp, f"{unique}.to-amqp", COUNT + 1)
    assert [body for _m, _p, body in messages] == [
        *(f"php stomp message {i}".encode() for i in range(COUNT)), b"php stomp in a transaction"]
    for i, (method, props, _body) in enumerate(messages[:COUNT]):
        assert method.exchange == ""
        assert method.routing_key == f"{unique}.to-amqp"
        assert props.content_type == "text/plain"
        assert props.correlation_id == f"corr-{i}"
        assert props.reply_to == f"/queue/{unique}.replies"
        assert props.message_id == f"msg-{i}"
        assert props.delivery_mode == 2
        assert props.priority == i + 1
        assert props.type == "php.test"
        assert props.app_id == "php-stomp"
        headers = props.headers or {}
        assert headers.get("x-index") == str(i)
        assert headers.get("x-client") == "php stomp"
    tx_props = messages[COUNT][1]
    assert tx_props.delivery_mode == 2
    assert (tx_props.headers or {}).get("x-client") == "php stomp"


def test_pika_to_php_stomp(php_stomp: str, stomp_broker: tuple[int, int], amqp: BlockingChannel,
                           unique: str) -> None:
    queue = f"{unique}.to-php"
    amqp.queue_declare(queue, durable=True)
    amqp.confirm_delivery()
    for i in range(COUNT):
        amqp.basic_publish("", queue, f"amqp message {i}".encode(), pika.BasicProperties(
            content_type="application/json", correlation_id=f"corr-{i}", reply_to=f"{unique}.replies",
            message_id=f"amqp-{i}", delivery_mode=2, priority=4, type="pika.test", app_id="pika",
            timestamp=1700000000, headers={"x-index": i, "x-client": "pika", "x-colon": "a:b"}))
    run_client([php_stomp, SCRIPT, "consume", HOST, str(stomp_broker[1]), unique], "php stomp")
    # client-individual: only the 2nd message was not acked; it is back in the queue, redelivered
    left = get_all(amqp, queue, 1)
    assert [(body, method.redelivered) for method, _props, body in left] == [(b"amqp message 1", True)]
    assert amqp.queue_declare(queue, passive=True).method.message_count == 0
