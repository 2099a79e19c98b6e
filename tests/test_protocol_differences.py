"""The last protocol differences from RabbitMQ that real clients saw (issue 12), each run on both brokers where
RabbitMQ's behaviour is the answer: the socket after connection.close-ok, the order of queue.delete-ok and
basic.cancel, SASL PLAIN with an authorization identity, deeply nested field tables."""

from __future__ import annotations

import pytest

from leveret.amqp import codec, spec

from amqphelp import connect
from rawamqp import RawClient


def _publish_frames(queue: str, count: int) -> bytes:
    one = b"".join([codec.method_frame(1, spec.method("basic.publish"), (0, "", queue, False, False)),
                    *codec.content_frames(1, codec.encode_properties({}), b"x" * 32, 131072)])
    return one * count


# --- connection.close-ok -----------------------------------------------------------------------------------


def test_close_ok_reaches_a_client_that_still_has_frames_in_flight(broker_port: int, unique: str) -> None:
    # A client that buffered thousands of publishes, then close, and whose writer still flushes frames after it:
    # the server answers close-ok and keeps reading (and discarding) until the client closes the socket. Closing
    # at once would reset the connection under the client's feet, and the reset can cost it the close-ok.
    client = RawClient(broker_port, timeout=10)
    client.handshake()
    client.open_channel()
    close = codec.method_frame(0, spec.method("connection.close"), (200, "bye", 0, 0))
    client.send(_publish_frames(unique, 3000) + close + _publish_frames(unique, 3000))
    while True:
        reply = client.recv_method(timeout=10)
        assert reply is not None, "the server closed the socket without close-ok"
        if reply[1] == "connection.close-ok":
            break
    client.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):  # still open: the server waits for the client to close
        client.sock.recv(1)
    client.close()


def test_a_client_that_never_closes_after_close_ok_is_disconnected(broker_port: int) -> None:
    # Bounded: the heartbeat interval (here 1 s), at most 30 s, as RabbitMQ's rabbit_reader.
    client = RawClient(broker_port, timeout=10)
    client.handshake(heartbeat=1)
    client.send_method(0, "connection.close", 200, "bye", 0, 0)
    reply = client.recv_method(timeout=10)
    assert reply is not None and reply[1] == "connection.close-ok"
    assert client.wait_closed(timeout=15)
    client.close()


def test_pika_closes_cleanly_right_after_thousands_of_publishes(broker_port: int, unique: str) -> None:
    conn = connect(broker_port)
    ch = conn.channel()
    ch.queue_declare(unique, auto_delete=False)
    for i in range(5000):
        ch.basic_publish("", unique, b"%d" % i)
    conn.close()  # pika waits for close-ok; an error or a reset raises here
    assert conn.is_closed
    conn = connect(broker_port)
    ch = conn.channel()
    assert ch.queue_declare(unique, passive=True).method.message_count == 5000
    ch.queue_delete(unique)
    conn.close()


# --- queue.delete with a consumer on the same channel ------------------------------------------------------


def test_queue_delete_ok_comes_before_the_consumers_basic_cancel(broker_port: int, unique: str) -> None:
    client = RawClient(broker_port)
    client.handshake()  # announces consumer_cancel_notify
    client.open_channel()
    client.send_method(1, "queue.declare", 0, unique, False, False, False, True, False, {})
    assert client.recv_method()[1] == "queue.declare-ok"  # type: ignore[index]
    client.send_method(1, "basic.consume", 0, unique, "ctag", False, False, False, False, {})
    assert client.recv_method()[1] == "basic.consume-ok"  # type: ignore[index]
    client.send_method(1, "queue.delete", 0, unique, False, False, False)
    replies = [client.recv_method(timeout=5), client.recv_method(timeout=5)]
    assert [(r[1], r[2]) for r in replies if r is not None] == [("queue.delete-ok", (0,)),
                                                                 ("basic.cancel", ("ctag", True))]
    client.close()
