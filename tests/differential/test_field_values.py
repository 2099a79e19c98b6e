"""Field values that no Python type holds losslessly are carried, never refused (issue 12).

A client that puts milliseconds where a timestamp's seconds belong sends a ``T`` value past year 9999; a table
may hold a long string that is not UTF-8, narrow integers and floats, tables nested thousands of levels deep.
RabbitMQ accepts such messages and delivers them byte for byte, through the store, dead-lettering (reject and
TTL expiry) and the management API. The differential tests run the same scenario on both brokers with raw
frames (no client library can send or read these values faithfully); the Leveret-only ones add a restart and
the management API, and a real client (aio-pika) reads the delivered message.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from leveret.amqp import codec, spec
from leveret.amqp.codec import RawField
from leveret.config import Config
from leveret.node import ThreadedServer

from amqphelp import connect
from httphelp import Client
from rawamqp import RawClient

MS = 1_700_000_000_000  # 2023-11-14 in milliseconds: a timestamp in seconds no datetime can hold
TS_MS = RawField(b"T", struct.pack(">Q", MS))


def deep_table(levels: int) -> bytes:
    raw = b"I\x00\x00\x00\x07"
    for _ in range(levels):
        body = b"\x01k" + raw
        raw = b"F" + struct.pack(">I", len(body)) + body
    return raw


def odd_headers() -> dict[str, Any]:
    """One header of each kind the codec cannot map to a plain Python value (and the router's key)."""
    return {
        "route": "yes",
        "ts": TS_MS,
        "not-utf8": RawField(b"S", b"\x00\x00\x00\x02\xc3\x28"),
        "byte": codec.Int8(-3),
        "float": codec.Float32(0.1),
        "deep": codec.decode_field_value(deep_table(3000), 0)[0],
    }


PROPERTIES = {"delivery_mode": 2, "headers": odd_headers(), "timestamp": MS}
# pamqp (aio-pika) recurses on nested tables and cannot read 3,000 levels: the message it reads has no "deep"
SHALLOW = {**PROPERTIES, "headers": {k: v for k, v in odd_headers().items() if k != "deep"}}


def setup_topology(port: int, prefix: str) -> None:
    """A headers exchange routing to a durable queue (dead-letters to ``<prefix>.dead``) and to a durable queue
    with a 1 ms TTL (dead-letters to ``<prefix>.expired``)."""
    conn = connect(port)
    ch = conn.channel()
    ch.exchange_declare(f"{prefix}.h", "headers", durable=True)
    ch.exchange_declare(f"{prefix}.dlx", "direct", durable=True)
    for name in ("dead", "expired"):
        ch.queue_declare(f"{prefix}.{name}", durable=True)
        ch.queue_bind(f"{prefix}.{name}", f"{prefix}.dlx", name)
    ch.queue_declare(f"{prefix}.main", durable=True, arguments={
        "x-dead-letter-exchange": f"{prefix}.dlx", "x-dead-letter-routing-key": "dead"})
    ch.queue_declare(f"{prefix}.ttl", durable=True, arguments={
        "x-dead-letter-exchange": f"{prefix}.dlx", "x-dead-letter-routing-key": "expired", "x-message-ttl": 1})
    for queue in ("main", "ttl"):
        ch.queue_bind(f"{prefix}.{queue}", f"{prefix}.h", "", arguments={"x-match": "all", "route": "yes"})
    conn.close()


def teardown_topology(port: int, prefix: str) -> None:
    conn = connect(port)
    ch = conn.channel()
    for queue in ("main", "ttl", "dead", "expired"):
        ch.queue_delete(f"{prefix}.{queue}")
    for exchange in ("h", "dlx"):
        ch.exchange_delete(f"{prefix}.{exchange}")
    conn.close()


def confirmed_publish(client: RawClient, exchange: str, properties: dict[str, Any]) -> None:
    client.send_method(1, "confirm.select", False)
    assert client.recv_method()[1] == "confirm.select-ok"  # type: ignore[index]
    client.publish(1, exchange, "", b"body", properties)
    reply = client.recv_method(timeout=5)
    assert reply is not None and reply[1] == "basic.ack", reply  # accepted and written, not a 541


def get_header(client: RawClient, queue: str) -> tuple[int, dict[str, Any], bytes]:
    """basic.get: (delivery tag, decoded properties, the raw property bytes)."""
    for _ in range(200):
        client.send_method(1, "basic.get", 0, queue, False)
        reply = client.recv_method(timeout=5)
        assert reply is not None, "connection closed"
        if reply[1] == "basic.get-ok":
            frame = client.recv_frame(timeout=5)
            assert frame is not None and frame[0] == spec.FRAME_HEADER
            client.recv_frame(timeout=5)  # the body
            raw = frame[2][12:]
            return reply[2][0], codec.decode_properties(raw), raw
        assert reply[1] == "basic.get-empty", reply
        time.sleep(0.02)  # polling for a dead-lettered message, bounded by the loop
    raise AssertionError(f"nothing arrived in {queue}")


def check_carried(props: dict[str, Any]) -> None:
    headers = props["headers"]
    for name, value in odd_headers().items():
        if name == "deep" and name not in headers:
            continue
        assert codec.encode_field_value(headers[name]) == codec.encode_field_value(value), name
    assert props["timestamp"] == MS


def test_values_python_cannot_hold_are_carried_through_store_reject_and_expiry(broker_port: int,
                                                                                unique: str) -> None:
    setup_topology(broker_port, unique)
    try:
        client = RawClient(broker_port)
        client.handshake()
        client.open_channel()
        confirmed_publish(client, f"{unique}.h", PROPERTIES)
        tag, _props, raw = get_header(client, f"{unique}.main")
        assert raw == codec.encode_properties(PROPERTIES)  # delivered with the bytes it was published with
        client.send_method(1, "basic.reject", tag, False)  # to the dead-letter exchange
        _, dead, _ = get_header(client, f"{unique}.dead")
        check_carried(dead)
        assert dead["headers"]["x-death"][0]["reason"] == "rejected"
        _, expired, _ = get_header(client, f"{unique}.expired")
        check_carried(expired)
        assert expired["headers"]["x-death"][0]["reason"] == "expired"
        client.send_method(0, "connection.close", 200, "bye", 0, 0)
        assert client.recv_method(timeout=5)[1] == "connection.close-ok"  # type: ignore[index]
        client.close()
    finally:
        teardown_topology(broker_port, unique)


@pytest.fixture
def restartable(make_config: Callable[..., Config]) -> Iterator[list[ThreadedServer]]:
    servers = [ThreadedServer(make_config(http_port=0)).start()]
    try:
        yield servers
    finally:
        servers[-1].stop()


def test_carried_values_survive_a_restart_and_the_management_api(restartable: list[ThreadedServer],
                                                                make_config: Callable[..., Config]) -> None:
    port = restartable[0].port
    setup_topology(port, "fv")
    client = RawClient(port)
    client.handshake()
    client.open_channel()
    client.send_method(1, "queue.declare", 0, "fv.args", False, True, False, False, False,
                       {"x-odd": TS_MS, "x-text": RawField(b"S", b"\x00\x00\x00\x01\xff")})
    assert client.recv_method(timeout=5)[1] == "queue.declare-ok"  # type: ignore[index]
    confirmed_publish(client, "fv.h", SHALLOW)
    client.publish(1, "fv.h", "", b"body", PROPERTIES)
    assert client.recv_method(timeout=5)[1] == "basic.ack"  # type: ignore[index]
    client.close()
    restartable[0].stop()
    restartable.append(ThreadedServer(make_config(http_port=0, port=port)).start())
    server = restartable[-1]

    api = Client(server.http_port)
    got = api.ok("POST", "/api/queues/%2F/fv.main/get",
                 {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"}, expect=(200,))
    assert got[0]["properties"]["headers"]["ts"] == MS and got[0]["properties"]["timestamp"] == MS
    deep = got[1]["properties"]["headers"]["deep"]  # 128 levels as JSON, the rest described
    for _ in range(codec.MAX_NESTING - 1):
        deep = deep["k"]
    assert deep["k"].startswith("<table nested deeper than")
    queue = api.get("/api/queues/%2F/fv.args")
    assert queue["arguments"]["x-odd"] == MS

    client = RawClient(server.port)
    client.handshake()
    client.open_channel()
    for published in (SHALLOW, PROPERTIES):
        tag, _props, raw = get_header(client, "fv.main")
        assert raw == codec.encode_properties(published)
        client.send_method(1, "basic.reject", tag, False)
        check_carried(get_header(client, "fv.dead")[1])
    client.close()

    async def read_with_aio_pika() -> Any:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("fv.expired", passive=True)
            message = await queue.get(timeout=5)
            await message.ack()
            return message.headers

    headers = asyncio.run(read_with_aio_pika())
    assert headers["route"] == "yes" and headers["x-death"][0]["reason"] == "expired"


def test_lock_file_is_private(make_config: Callable[..., Config], tmp_path: Path) -> None:
    server = ThreadedServer(make_config()).start()
    try:
        lock = tmp_path / "data" / "leveret.db.lock"
        assert lock.exists() and lock.stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()


@pytest.mark.parametrize(("value", "name"), [
    (codec.Int8(5), "byte"), (codec.UInt8(5), "unsignedbyte"), (codec.Int16(5), "short"),
    (codec.UInt16(5), "unsignedshort"), (codec.UInt32(5), "unsignedint"), (codec.LongInt(5), "long"), (5, "signedint"),
])
def test_error_texts_name_the_width_a_value_came_with(broker_port: int, unique: str, value: int, name: str) -> None:
    client = RawClient(broker_port)
    client.handshake()
    client.open_channel()
    client.send_method(1, "queue.declare", 0, unique, False, False, False, False, False, {"x-max-length": value})
    assert client.recv_method(timeout=5)[1] == "queue.declare-ok"  # type: ignore[index]
    client.send_method(1, "queue.declare", 0, unique, False, False, False, False, False, {})
    reply = client.recv_method(timeout=5)
    assert reply is not None and reply[2][:2] == (406, (
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{unique}' in vhost '/': received none "
        f"but current is the value '5' of type '{name}'"))
    client.send_method(1, "channel.close-ok")
    client.open_channel(2)
    client.send_method(2, "queue.delete", 0, unique, False, False, False)
    assert client.recv_method(timeout=5)[1] == "queue.delete-ok"  # type: ignore[index]
    client.close()
