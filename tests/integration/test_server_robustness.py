"""The server's edge: shutdown on signals, heartbeats, back-pressure and memory alarms, bad input."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pika
import pytest
from pika.exceptions import ConnectionClosedByBroker

from leveret.amqp import spec
from leveret.node import ThreadedServer
from leveret.server import edge

from rawamqp import RawClient
from serverproc import LeveretProcess


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_connections_with_320_and_exits_0(tmp_path: Path, sig: int) -> None:
    server = LeveretProcess(tmp_path / "data").start()
    try:
        client = RawClient(server.port)
        client.handshake()
        client.open_channel()
        assert server.wait_for_log(r"user 'guest' authenticated and granted access to vhost '/'")
        server.signal(sig)
        reply = client.recv_method(timeout=10)
        assert reply is not None
        channel, name, args = reply
        assert (channel, name, args[0]) == (0, "connection.close", spec.CONNECTION_FORCED)
        assert args[1] == "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
        client.send_method(0, "connection.close-ok")
        assert server.wait(20) == 0
        assert client.wait_closed(5)
    finally:
        server.kill()
    assert "accepting AMQP connection 127.0.0.1:" in server.log
    assert "closing AMQP connection 127.0.0.1:" in server.log and "user 'guest'" in server.log


def test_signal_with_pika_client(tmp_path: Path) -> None:
    server = LeveretProcess(tmp_path / "data").start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        server.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosedByBroker) as info:
            conn.process_data_events(time_limit=10)
        assert info.value.reply_code == 320
        assert server.wait(20) == 0
    finally:
        server.kill()


def test_server_sends_heartbeats(leveret: ThreadedServer) -> None:
    client = RawClient(leveret.port)
    client.handshake(heartbeat=1)
    frame = client.recv_frame(timeout=3)  # heartbeat 1 s: one is due well within the 3 s deadline
    assert frame is not None and frame[0] == spec.FRAME_HEARTBEAT and frame[1] == 0
    client.close()


def test_silent_client_is_disconnected_after_two_missed_heartbeats(leveret: ThreadedServer) -> None:
    client = RawClient(leveret.port)
    client.handshake(heartbeat=1)
    started = time.monotonic()
    assert client.wait_closed(timeout=6)
    assert time.monotonic() - started >= 1.5  # not before two heartbeats were missed


def test_client_heartbeats_keep_the_connection(leveret: ThreadedServer) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leveret.port, heartbeat=1))
    conn.sleep(3.5)  # the thing under test: 3.5 s idle with 1 s heartbeats (pika answers them while sleeping)
    assert conn.is_open
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)
    conn.close()


def test_handshake_timeout_closes_silent_socket(leveret: ThreadedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge, "HANDSHAKE_TIMEOUT", 1.0)  # read per connection; 10 s in production
    sock = socket.create_connection(("127.0.0.1", leveret.port))
    sock.sendall(spec.PROTOCOL_HEADER)
    sock.settimeout(15)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"\x01\x00\x00")  # connection.start, then closed after the handshake timeout


def test_bad_protocol_header_gets_ours_and_close(leveret: ThreadedServer) -> None:
    sock = socket.create_connection(("127.0.0.1", leveret.port), timeout=5)
    sock.sendall(b"AMQP\x00\x00\x08\x00")
    assert sock.recv(8) == b"AMQP\x00\x00\x09\x01"
    assert sock.recv(8) == b""


def test_garbage_frame_closes_only_that_connection(leveret: ThreadedServer) -> None:
    bystander = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leveret.port))
    ch = bystander.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue
    bad = RawClient(leveret.port)
    bad.handshake()
    bad.open_channel()
    bad.send(b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x28\x00")  # bad frame-end byte
    reply = bad.recv_method(timeout=5)
    assert reply is not None and reply[1] == "connection.close" and reply[2][0] == spec.FRAME_ERROR
    ch.basic_publish("", queue, b"still here")
    _method, _props, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"still here"
    bystander.close()


def test_oversized_message_closes_channel_with_406(make_config: object) -> None:
    server = ThreadedServer(make_config(max_message_size=1000)).start()  # type: ignore[operator]
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"x" * 1001)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(queue, passive=True)
        assert info.value.reply_code == 406
        assert "message size 1001 is larger than configured max size 1000" in info.value.reply_text
        ch2 = conn.channel()
        ch2.basic_publish("", queue, b"x" * 1000)
        assert ch2.queue_declare(queue, passive=True).method.message_count == 1
        conn.close()
    finally:
        server.stop()


def test_memory_alarm_blocks_publishers_and_unblocks(make_config: object) -> None:
    server = ThreadedServer(make_config(memory_high_watermark=200_000)).start()  # type: ignore[operator]
    try:
        blocked: list[str] = []
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        conn.add_on_connection_blocked_callback(lambda _c, frame: blocked.append("blocked"))
        conn.add_on_connection_unblocked_callback(lambda _c, frame: blocked.append("unblocked"))
        ch = conn.channel()
        queue = ch.queue_declare("alarmq").method.queue
        for _ in range(30):
            ch.basic_publish("", queue, b"x" * 10_000)
        conn.process_data_events(time_limit=1)
        assert blocked == ["blocked"]
        assert server.broker.memory.alarm
        # a consuming connection is not blocked: draining the queue clears the alarm
        other = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        och = other.channel()
        assert och.queue_declare(queue, passive=True).method.message_count >= 20
        other.close()
        # purge through the core (the blocked connection's own channel cannot be read by the server)
        server.call(lambda: server.broker.vhosts["/"].queues[queue].purge())
        server.call(server.broker.memory.check)
        deadline = time.monotonic() + 5
        while "unblocked" not in blocked and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert blocked == ["blocked", "unblocked"]
        ch.basic_publish("", queue, b"after")
        assert ch.queue_declare(queue, passive=True).method.message_count >= 1
        conn.close()
    finally:
        server.stop()


def test_slow_consumer_does_not_grow_memory_without_bound(make_config: object) -> None:
    """A consumer that never reads its socket: the server stops writing to it, keeps messages queued, and
    the memory alarm stops the publisher instead of buffering without limit."""
    server = ThreadedServer(make_config(memory_high_watermark=2_000_000)).start()  # type: ignore[operator]
    try:
        slow = RawClient(server.port)
        slow.handshake()
        slow.open_channel()
        slow.send_method(1, "queue.declare", 0, "slowq", False, False, False, True, False, {})
        assert slow.recv_method(timeout=5) is not None
        slow.send_method(1, "basic.consume", 0, "slowq", "c1", False, True, False, False, {})
        assert slow.recv_method(timeout=5) is not None
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # the slow client now stops reading
        publisher = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        blocked = threading.Event()
        publisher.add_on_connection_blocked_callback(lambda _c, _f: blocked.set())
        ch = publisher.channel()
        body = b"y" * 10_000
        sent = 0
        deadline = time.monotonic() + 20
        while not blocked.is_set() and time.monotonic() < deadline and sent < 5000:
            ch.basic_publish("", "slowq", body)
            sent += 1
            if sent % 50 == 0:
                publisher.process_data_events(time_limit=0)
        assert blocked.is_set(), f"publisher never blocked after {sent} messages"
        used = server.broker.memory.used
        assert used < 2_000_000 + 50 * len(body) * 4
        queue = server.broker.vhosts["/"].queues["slowq"]
        assert queue.message_count > 0  # the rest waits in the queue, not in socket buffers
        slow.close()
    finally:
        server.stop()


def test_disk_alarm_blocks_publishers_with_reason(make_config: object) -> None:
    """disk_free_limit above the free space: the disk alarm is on from the start, publishers are blocked
    with RabbitMQ's reason text, consumers are not."""
    server = ThreadedServer(make_config(disk_free_limit=2**60)).start()  # type: ignore[operator]
    try:
        assert server.broker.memory.disk_alarm
        client = RawClient(server.port)
        client.handshake()
        client.open_channel()
        client.send_method(1, "queue.declare", 0, "diskq", False, False, False, False, False, {})
        assert client.recv_method(timeout=5) is not None
        client.publish(1, "", "diskq", b"m")
        reply = client.recv_method(timeout=5)
        assert reply == (0, "connection.blocked", ("low on disk",))
        consumer = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        assert consumer.channel().queue_declare("diskq", passive=True).method.message_count == 1
        consumer.close()
        client.close()
    finally:
        server.stop()
