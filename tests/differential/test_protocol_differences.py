"""The last protocol differences from RabbitMQ that real clients saw (issue 12), each run on both brokers where
RabbitMQ's behaviour is the answer: the socket after connection.close-ok, the order of queue.delete-ok and
basic.cancel, SASL PLAIN with an authorization identity, deeply nested field tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pika
import pytest
from conftest import require_rabbitmq

from leveret.amqp import codec, spec
from leveret.config import Config
from leveret.node import ThreadedServer

from amqphelp import connect
from httphelp import Client
from rawamqp import RawClient
from waiting import poll


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


# --- SASL PLAIN ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("response", [
    b"admin\0guest\0guest",  # an authorization identity (RFC 4616's authzid): RabbitMQ does not support it
    b"guest\0guest\0guest",  # even one naming the same user
    b"\0guest\0guest\0",  # a NUL after the password
    b"\0guest",  # no password
])
def test_plain_with_an_authorization_identity_or_malformed_is_refused(broker_port: int, response: bytes) -> None:
    client = RawClient(broker_port)
    client.send(spec.PROTOCOL_HEADER)
    assert client.recv_method()[1] == "connection.start"  # type: ignore[index]
    client.send_method(0, "connection.start-ok", {"capabilities": {"authentication_failure_close": True}},
                       "PLAIN", response, "en_US")
    try:
        reply = client.recv_method(timeout=5)
    except ConnectionResetError:  # RabbitMQ closes with a reset, Leveret with a FIN: no frame either way
        reply = None
    assert reply is None
    client.close()


def test_plain_without_an_authorization_identity_logs_in(broker_port: int) -> None:
    client = RawClient(broker_port)
    client.handshake()
    client.close()


# --- management API: who sees which connections; /metrics ---------------------------------------------------


@pytest.fixture(params=["leveret", "rabbitmq"])
def ports(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Iterator[tuple[int, int]]:
    """(AMQP port, management port) of a fresh Leveret, or of the reference RabbitMQ."""
    if request.param == "rabbitmq":
        require_rabbitmq()
        if Client(15672).request("GET", "/api/overview")[0] != 200:
            pytest.skip("no RabbitMQ management API on 127.0.0.1:15672")
        yield 5672, 15672
        return
    server = ThreadedServer(make_config(http_port=0)).start()
    try:
        yield server.port, server.http_port
    finally:
        server.stop()


def _poll(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 20.0) -> Any:
    """RabbitMQ's management statistics arrive every few seconds: poll until ``done`` or the deadline."""
    return poll(fetch, done, timeout, interval=0.2)


def test_a_management_user_sees_only_their_own_connections_and_channels(ports: tuple[int, int],
                                                                         unique: str) -> None:
    amqp_port, http_port = ports
    admin = Client(http_port)
    user = f"mgr-{unique}"
    admin.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})
    admin.ok("PUT", f"/api/permissions/%2F/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
    mine = theirs = None
    try:
        theirs = connect(amqp_port)
        theirs.channel()
        mine = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port,
                                                                 credentials=pika.PlainCredentials(user, "pw")))
        mine.channel()

        def users(path: str, client: Client) -> set[str]:
            return {item["user"] for item in client.get(path)}

        for path in ("/api/connections", "/api/channels", "/api/vhosts/%2F/connections", "/api/vhosts/%2F/channels"):
            assert {"guest", user} <= _poll(lambda p=path: users(p, admin), lambda seen: {"guest", user} <= seen)
            assert users(path, Client(http_port, user, "pw")) == {user}
        guest_connection = next(c["name"] for c in admin.get("/api/connections") if c["user"] == "guest")
        status, body, _ = Client(http_port, user, "pw").request(
            "GET", "/api/connections/" + quote(guest_connection, safe=""))
        assert (status, body["reason"]) == (401, "User not authorised to access object")
    finally:
        for connection in (mine, theirs):
            if connection is not None and connection.is_open:
                connection.close()
        admin.request("DELETE", f"/api/users/{user}")


def test_metrics_are_open_by_default_and_can_require_a_monitoring_login(make_config: Callable[..., Config]) -> None:
    server = ThreadedServer(make_config(http_port=0)).start()
    try:
        status, body, _ = Client(server.http_port).request("GET", "/metrics", auth=False)
        assert status == 200 and b"rabbitmq_queues" in body  # as RabbitMQ's Prometheus plugin
    finally:
        server.stop()
    server = ThreadedServer(make_config(http_port=0, metrics_auth=True)).start()
    try:
        api = Client(server.http_port)
        api.ok("PUT", "/api/users/mon", {"password": "pw", "tags": "monitoring"})
        api.ok("PUT", "/api/users/mgr", {"password": "pw", "tags": "management"})
        status, _, headers = api.request("GET", "/metrics", auth=False)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert api.request("GET", "/metrics", auth=("guest", "wrong"))[0] == 401
        assert api.request("GET", "/metrics", auth=("mgr", "pw"))[0] == 401
        assert api.request("GET", "/metrics", auth=("mon", "pw"))[0] == 200
        assert api.request("GET", "/metrics")[0] == 200  # guest is an administrator
    finally:
        server.stop()
