"""Connection and channel classes with real clients: login (PLAIN, AMQPLAIN), tune, open, close,
update-secret, channel open/close/flow, and the connection-level reply codes.

Tests taking ``broker_port`` run against Leveret and against RabbitMQ (skipped when it is absent), so the
expected values are RabbitMQ's.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import amqp
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingConnection

from leveret.amqp import spec
from leveret.config import Config
from leveret.node import ThreadedServer

from rawamqp import RawClient

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


def connect(port: int, **params: Any) -> BlockingConnection:
    params.setdefault("connection_attempts", 1)
    return BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, **params))


def url(port: int, user: str = "guest", password: str = "guest", vhost: str = "") -> str:
    return f"amqp://{user}:{password}@127.0.0.1:{port}/{vhost}"


# --- start / start-ok ------------------------------------------------------------------------------


def test_plain_login_and_server_properties(broker_port: int) -> None:
    conn = connect(broker_port, credentials=pika.PlainCredentials("guest", "guest"))
    try:
        server = conn._impl.server_properties
        assert server["capabilities"] == CAPABILITIES
        assert server["product"] in ("RabbitMQ", "Leveret")
        assert {"cluster_name", "copyright", "information", "platform", "product", "version"} <= set(server)
        ch = conn.channel()
        assert ch.is_open
    finally:
        conn.close()
    assert conn.is_closed


def test_start_offers_both_mechanisms_and_tune_has_rabbitmq_defaults(broker_port: int) -> None:
    client = RawClient(broker_port, timeout=3)
    try:
        client.send(spec.PROTOCOL_HEADER)
        start = client.recv_method()
        assert start is not None
        channel, name, (major, minor, _props, mechanisms, locales) = start
        assert (channel, name, major, minor) == (0, "connection.start", 0, 9)
        assert mechanisms.split() == [b"AMQPLAIN", b"PLAIN"]
        assert locales == b"en_US"
        client.send_method(0, "connection.start-ok", {}, "PLAIN", b"\0guest\0guest", "en_US")
        assert client.recv_method() == (0, "connection.tune", (2047, 131072, 60))
    finally:
        client.close()


def test_amqplain_login(broker_port: int) -> None:
    conn = amqp.Connection(f"127.0.0.1:{broker_port}", userid="guest", password="guest", login_method="AMQPLAIN",
                           connect_timeout=3)
    conn.connect()
    try:
        assert conn.connected
        assert conn.server_properties["capabilities"]["publisher_confirms"] is True
        ch = conn.channel()
        name, count, consumers = ch.queue_declare("", exclusive=True)
        assert name.startswith("amq.gen-")
        assert (count, consumers) == (0, 0)
    finally:
        conn.close()


def test_amqplain_wrong_password_is_403(broker_port: int) -> None:
    conn = amqp.Connection(f"127.0.0.1:{broker_port}", userid="guest", password="nope", login_method="AMQPLAIN",
                           connect_timeout=3)
    with pytest.raises(amqp.exceptions.AccessRefused) as info:
        conn.connect()
    conn.collect()
    assert info.value.reply_code == 403
    assert info.value.reply_text == ("ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. "
                                     "For details see the broker logfile.")


def test_plain_wrong_password_is_403(broker_port: int) -> None:
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        connect(broker_port, credentials=pika.PlainCredentials("guest", "wrong"))
    assert "(403) 'ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN." in str(info.value)


async def test_unknown_user_is_refused_aio_pika(broker_port: int) -> None:
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError) as info:
        await aio_pika.connect(url(broker_port, user="nobody-here", password="x"), timeout=3)
    assert info.value.args[0].startswith("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN")


def test_wrong_password_without_capability_closes_the_socket(leveret: ThreadedServer) -> None:
    """RabbitMQ does the same, after a delay of 3 s (too slow to run here every time)."""
    client = RawClient(leveret.port, timeout=3)
    try:
        client.send(spec.PROTOCOL_HEADER)
        client.recv_method()
        client.send_method(0, "connection.start-ok", {}, "PLAIN", b"\0guest\0wrong", "en_US")
        try:
            frame = client.recv_frame(timeout=3)
        except ConnectionResetError:
            frame = None
        assert frame is None  # no connection.close: the client did not say it understands one
    finally:
        client.close()


# --- tune / open -----------------------------------------------------------------------------------


def test_pika_negotiates_rabbitmq_defaults(broker_port: int) -> None:
    conn = connect(broker_port)
    try:
        params = conn._impl.params
        assert (params.frame_max, params.channel_max, params.heartbeat) == (131072, 2047, 60)
    finally:
        conn.close()


def test_client_heartbeat_below_server_value_wins(broker_port: int) -> None:
    conn = connect(broker_port, heartbeat=5)
    try:
        assert conn._impl.params.heartbeat == 5
        conn.process_data_events(time_limit=0.05)
        assert conn.is_open
    finally:
        conn.close()


def test_unknown_vhost_is_530(broker_port: int) -> None:
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        connect(broker_port, virtual_host="no-such-vhost")
    assert "(530) 'NOT_ALLOWED - vhost no-such-vhost not found'" in str(info.value)


def test_unknown_vhost_raw_close_names_connection_open(broker_port: int) -> None:
    client = RawClient(broker_port, timeout=3)
    try:
        with pytest.raises(AssertionError, match=r"connection\.close"):
            client.handshake(vhost="no-such-vhost")
    finally:
        client.close()


# --- close -----------------------------------------------------------------------------------------


def test_client_close_gets_close_ok(broker_port: int) -> None:
    client = RawClient(broker_port, timeout=3)
    try:
        client.handshake()
        client.open_channel(1)
        client.send_method(0, "connection.close", 200, "Normal shutdown", 0, 0)
        assert client.recv_method() == (0, "connection.close-ok", ())
    finally:
        client.close()


def test_closing_connection_deletes_its_exclusive_queues(broker_port: int, unique: str) -> None:
    owner = connect(broker_port)
    owner.channel().queue_declare(unique, exclusive=True)
    other = connect(broker_port)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            other.channel().queue_declare(unique, passive=True)
        assert info.value.reply_code == 405
        owner.close()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            other.channel().queue_declare(unique, passive=True)
        assert info.value.reply_code == 404
    finally:
        other.close()


async def test_aio_pika_close_and_reconnect(broker_port: int) -> None:
    for _ in range(2):
        conn = await aio_pika.connect(url(broker_port), timeout=3)
        channel = await conn.channel()
        queue = await channel.declare_queue(exclusive=True)
        assert queue.name.startswith("amq.gen-")
        await conn.close()
        assert conn.is_closed


def test_connection_forced_320_on_broker_shutdown(make_config: Callable[..., Config]) -> None:
    server = ThreadedServer(make_config()).start()
    conn = connect(server.port)
    conn.channel()
    errors: list[BaseException] = []

    def client() -> None:  # answers connection.close with close-ok while the broker shuts down
        try:
            conn.process_data_events(time_limit=3)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    # a grace of 60 s: the stop can only return within the 30 s deadline because the client's close-ok ended it
    asyncio.run_coroutine_threadsafe(server.server.stop(grace=60), server.loop).result(30)
    server.stop()  # the rest of the shutdown (no connection is left to wait for)
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], pika.exceptions.ConnectionClosedByBroker)
    assert errors[0].reply_code == 320
    assert errors[0].reply_text == "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


# --- update-secret ---------------------------------------------------------------------------------


async def test_update_secret(broker_port: int) -> None:
    conn = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        result = await conn.transport.connection.update_secret("guest", reason="token refresh", timeout=3)
        assert type(result).__name__ == "UpdateSecretOk"
        channel = await conn.channel()
        queue = await channel.declare_queue(exclusive=True)
        assert queue.name.startswith("amq.gen-")
    finally:
        await conn.close()


# --- channel ---------------------------------------------------------------------------------------


def test_channel_open_close_and_reuse_of_numbers(broker_port: int) -> None:
    conn = connect(broker_port)
    try:
        first = conn.channel()
        second = conn.channel()
        assert (first.channel_number, second.channel_number) == (1, 2)
        first.close()
        assert first.is_closed and second.is_open
        again = conn.channel(channel_number=1)
        assert again.is_open
        assert again.queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")
    finally:
        conn.close()


def test_channel_error_closes_only_that_channel(broker_port: int, unique: str) -> None:
    conn = connect(broker_port)
    try:
        bad, good = conn.channel(), conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            bad.queue_declare(unique, passive=True)
        assert bad.is_closed
        assert good.is_open and conn.is_open
        assert good.queue_declare(unique, exclusive=True).method.queue == unique
    finally:
        conn.close()


def test_channel_flow_active_is_answered(broker_port: int) -> None:
    conn = connect(broker_port)
    try:
        ch = conn.channel()
        assert ch.flow(True) is True
        assert ch.is_open
    finally:
        conn.close()


def test_channel_flow_inactive_is_540(broker_port: int) -> None:
    conn = connect(broker_port)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.flow(False)
    assert (info.value.reply_code, info.value.reply_text) == (540, "NOT_IMPLEMENTED - active=false")
    assert conn.is_closed


def test_channel_close_from_client_gets_close_ok(broker_port: int) -> None:
    client = RawClient(broker_port, timeout=3)
    try:
        client.handshake()
        client.open_channel(3)
        client.send_method(3, "channel.close", 200, "bye", 0, 0)
        assert client.recv_method() == (3, "channel.close-ok", ())
        client.open_channel(3)  # the number can be opened again
    finally:
        client.close()


# --- connection-level reply codes for broken frames -----------------------------------------------


def closing_reply(client: RawClient) -> tuple[int, str, int, int]:
    method = client.recv_method(timeout=3)
    assert method is not None
    channel, name, (code, text, class_id, method_id) = method
    assert (channel, name) == (0, "connection.close")
    return code, text.split(" - ")[0], class_id, method_id


@pytest.mark.parametrize(("frames", "expected"), [
    pytest.param(struct.pack(">BHIHH", 1, 1, 4, 20, 40) + b"\x00", (501, "FRAME_ERROR", 0, 0), id="501-frame-end"),
    pytest.param(struct.pack(">BHI", 9, 0, 0) + b"\xce", (501, "FRAME_ERROR", 0, 0), id="501-frame-type"),
    pytest.param(struct.pack(">BHI", 3, 1, 3) + b"abc\xce", (505, "UNEXPECTED_FRAME", 0, 0), id="505-body"),
    pytest.param(struct.pack(">BHIHHB", 1, 1, 5, 20, 10, 0) + b"\xce", (504, "CHANNEL_ERROR", 20, 10),
                 id="504-second-channel-open"),
])
def test_broken_frames_close_the_connection(broker_port: int, frames: bytes, expected: tuple[Any, ...]) -> None:
    client = RawClient(broker_port, timeout=3)
    try:
        client.handshake()
        client.open_channel(1)
        client.send(frames)
        assert closing_reply(client) == expected
    finally:
        client.close()


def test_method_on_unopened_channel_is_504(broker_port: int) -> None:
    client = RawClient(broker_port, timeout=3)
    try:
        client.handshake()
        client.send_method(7, "queue.declare", 0, "q", False, False, False, False, False, {})
        assert closing_reply(client) == (504, "CHANNEL_ERROR", 50, 10)
    finally:
        client.close()
