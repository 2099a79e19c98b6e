"""STOMP against a real Leveret (the ``stomp_server`` fixture): the stomp.py client, pika for interoperability, and
raw sockets for what a well-behaved client never sends (malformed frames, missed heart-beats)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
import stomp
from stomp.utils import Frame as ClientFrame

from leveret.config import Config
from leveret.node import ThreadedServer

from amqphelp import connect as amqp_connect
from waiting import hold, wait_for


class Recorder(stomp.ConnectionListener):
    """Every MESSAGE, RECEIPT and ERROR a stomp.py connection receives, and whether it was disconnected."""

    def __init__(self) -> None:
        self.messages: list[ClientFrame] = []
        self.receipts: list[str] = []
        self.errors: list[ClientFrame] = []
        self.disconnected = threading.Event()

    def on_message(self, frame: ClientFrame) -> None:
        self.messages.append(frame)

    def on_receipt(self, frame: ClientFrame) -> None:
        self.receipts.append(frame.headers["receipt-id"])

    def on_error(self, frame: ClientFrame) -> None:
        self.errors.append(frame)

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def wait_messages(self, count: int) -> list[ClientFrame]:
        wait_for(lambda: len(self.messages) >= count, message=f"{count} messages (got {len(self.messages)})")
        return self.messages

    def wait_receipt(self, receipt: str) -> None:
        wait_for(lambda: receipt in self.receipts, message=f"receipt {receipt} (got {self.receipts})")


Client = tuple[stomp.Connection12, Recorder]


@pytest.fixture
def client(stomp_server: ThreadedServer) -> Iterator[Callable[..., Client]]:
    """Open stomp.py connections to the server (version "1.2", "1.1" or "1.0"); all are closed afterwards."""
    opened: list[Any] = []

    def open_client(version: str = "1.2", login: str = "guest", passcode: str = "guest", vhost: str = "/",
                    wait: bool = True, **kwargs: Any) -> Client:
        cls = {"1.2": stomp.Connection12, "1.1": stomp.Connection11, "1.0": stomp.Connection10}[version]
        if version == "1.0":
            conn = cls([("127.0.0.1", stomp_server.stomp_port)], **kwargs)
        else:
            conn = cls([("127.0.0.1", stomp_server.stomp_port)], vhost=vhost, **kwargs)
        recorder = Recorder()
        conn.set_listener("recorder", recorder)
        opened.append(conn)
        if version == "1.0":
            conn.connect(login, passcode, wait=wait, headers={"host": vhost})
        else:
            conn.connect(login, passcode, wait=wait)
        return conn, recorder  # type: ignore[return-value]

    yield open_client
    for conn in opened:
        if conn.is_connected():
            conn.disconnect()


class Raw:
    """A STOMP connection over a plain socket, for frames stomp.py would not send."""

    def __init__(self, port: int, connect: bytes | None = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\n"
                                                            b"passcode:guest\n\n\x00") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.data = b""
        if connect is not None:
            self.sock.sendall(connect)
            assert self.read_until(b"\x00").startswith(b"CONNECTED\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, marker: bytes) -> bytes:
        """Everything up to and including ``marker`` (raises at EOF or the socket's timeout)."""
        while marker not in self.data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.data)
            self.data += chunk
        end = self.data.index(marker) + len(marker)
        out, self.data = self.data[:end], self.data[end:]
        return out

    def read_to_eof(self) -> bytes:
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                out, self.data = self.data, b""
                return out
            self.data += chunk

    def close(self) -> None:
        self.sock.close()


def error_frame(data: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = data.lstrip(b"\r\n").partition(b"\n\n")
    lines = head.decode().split("\n")
    assert lines[0] == "ERROR", data
    return dict(line.split(":", 1) for line in lines[1:]), body.rstrip(b"\n").rstrip(b"\x00")


def amqp_get(port: int, queue: str) -> tuple[Any, Any, bytes] | tuple[None, None, None]:
    conn = amqp_connect(port)
    try:
        return conn.channel().basic_get(queue, auto_ack=True)  # type: ignore[no-any-return]
    finally:
        conn.close()


def amqp_get_next(port: int, queue: str) -> tuple[Any, Any, bytes]:
    """The next message of ``queue``, waiting for one (a STOMP client's unacked messages are requeued when the
    server has closed its connection, which may be after stomp.py's disconnect() returned)."""
    found: list[Any] = []

    def fetch() -> bool:
        got = amqp_get(port, queue)
        if got[0] is not None:
            found.append(got)
        return bool(found)

    wait_for(fetch, message=f"a message in {queue}")
    return found[0]  # type: ignore[no-any-return]


# --- basics --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_send_subscribe_and_ack_in_each_version(client: Callable[..., Client], version: str) -> None:
    conn, rec = client(version)
    conn.subscribe("/queue/basic", id="s1", ack="client-individual")
    conn.send("/queue/basic", "hello", headers={"receipt": "r1"})
    rec.wait_receipt("r1")
    (msg,) = rec.wait_messages(1)
    assert msg.body == "hello"
    assert msg.headers["destination"] == "/queue/basic"
    assert msg.headers["subscription"] == "s1"
    assert msg.headers["redelivered"] == "false"
    assert msg.headers["message-id"].startswith("T_s1@@session-")
    if version == "1.2":
        assert msg.headers["ack"] == msg.headers["message-id"]
        conn.ack(msg.headers["ack"], receipt="a1")
    elif version == "1.1":
        assert "ack" not in msg.headers
        conn.ack(msg.headers["message-id"], "s1", receipt="a1")
    else:
        assert "ack" not in msg.headers
        conn.ack(msg.headers["message-id"], receipt="a1")
    rec.wait_receipt("a1")
    assert not rec.errors


def test_connected_frame(stomp_server: ThreadedServer) -> None:
    raw = Raw(stomp_server.stomp_port, None)
    raw.send(b"CONNECT\naccept-version:1.0,1.1\nheart-beat:1500,2500\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
    head = raw.read_until(b"\x00").decode()
    headers = dict(line.split(":", 1) for line in head.split("\n")[1:] if ":" in line)
    assert head.startswith("CONNECTED\n")
    assert headers["version"] == "1.1"
    assert headers["server"].startswith("Leveret/")
    assert headers["session"].startswith("session-")
    assert headers["heart-beat"] == "2000,1000"  # as RabbitMQ: whole seconds, ours to send from the client's cy
    raw.close()


def test_login_without_login_header_is_guest(stomp_server: ThreadedServer) -> None:
    raw = Raw(stomp_server.stomp_port, None)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
    assert raw.read_until(b"\x00").startswith(b"CONNECTED\n")
    raw.close()


@pytest.mark.parametrize(("connect", "message", "detail"), [
    (b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:wrong\nreceipt:c1\n\n\x00", "Bad CONNECT",
     b"Access refused for user 'guest'\n"),
    (b"CONNECT\naccept-version:1.2\nhost:nope\nlogin:guest\npasscode:guest\n\n\x00", "Bad CONNECT",
     b"Virtual host 'nope' access denied"),
    (b"CONNECT\naccept-version:2.0\nhost:/\nlogin:guest\npasscode:guest\n\n\x00", "Version mismatch",
     b"Supported versions are 1.0,1.1,1.2\n"),
    (b"SEND\ndestination:/queue/x\n\n\x00", "Illegal command", b"You must log in using CONNECT first"),
])
def test_refused_connect(stomp_server: ThreadedServer, connect: bytes, message: str, detail: bytes) -> None:
    raw = Raw(stomp_server.stomp_port, None)
    raw.send(connect)
    headers, body = error_frame(raw.read_to_eof())  # the ERROR frame, then the server closes the connection
    assert headers["message"] == message
    assert body == detail
    if b"receipt:c1" in connect:
        assert headers["receipt-id"] == "c1"
    raw.close()


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "message"), [
    (b"SEND\ndestination:/queue/x\ncontent-length:2\n\nabc\x00", "Malformed frame"),  # no NUL after the body
    (b"SEND\ndestination:/queue/x\nbig:" + b"x" * 70000 + b"\n\n\x00", "Headers too large"),
    (b"SEND\ndestination:/queue/x\nbad:a\\tb\n\n\x00", "Bad header escape"),
    (b"FLY\nreceipt:r9\n\n\x00", "Bad command"),
    (b"SEND\ndestination:/foo/bar\nreceipt:r9\n\n\x00", "Unknown destination"),
    (b"SEND\ndestination:plain\nreceipt:r9\n\n\x00", "Unknown destination"),
    (b"SUBSCRIBE\ndestination:/amq/queue/missing\nid:1\nreceipt:r9\n\n\x00", "not_found"),
    (b"SEND\ndestination:/exchange/missing/k\nreceipt:r9\n\n\x00", "not_found"),
    (b"ACK\nid:T_1@@nosuchsession@@1\nreceipt:r9\n\n\x00", "Invalid header"),
])
def test_bad_frames_get_an_error_frame_and_close_without_harm_to_others(
        stomp_server: ThreadedServer, client: Callable[..., Client], frame: bytes, message: str) -> None:
    other, rec = client()
    other.subscribe("/queue/bystander", id="b")
    raw = Raw(stomp_server.stomp_port)
    raw.send(frame)
    headers, body = error_frame(raw.read_to_eof())
    assert headers["message"] == message, body
    assert headers["content-type"] == "text/plain"
    if b"receipt:r9" in frame:
        assert headers["receipt-id"] == "r9"
    raw.close()
    other.send("/queue/bystander", "still here")
    assert rec.wait_messages(1)[0].body == "still here"


def test_unknown_destination_text_is_rabbitmqs(stomp_server: ThreadedServer) -> None:
    raw = Raw(stomp_server.stomp_port)
    raw.send(b"SEND\ndestination:/foo/bar\n\n\x00")
    _, body = error_frame(raw.read_to_eof())
    assert body == (b"'/foo/bar' is not a valid destination.\nValid destination types are: /temp-queue, /exchange, "
                    b"/topic, /queue, /amq/queue, /reply-queue/.\n")


def test_missed_heartbeats_close_the_connection(stomp_server: ThreadedServer) -> None:
    raw = Raw(stomp_server.stomp_port, None)
    raw.send(b"CONNECT\naccept-version:1.2\nheart-beat:1000,0\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
    assert b"heart-beat:0,1000" in raw.read_until(b"\x00")
    assert raw.read_to_eof() in (b"", b"\n")  # nothing sent for two intervals: the server closes


def test_server_sends_heartbeats(stomp_server: ThreadedServer) -> None:
    raw = Raw(stomp_server.stomp_port, None)
    raw.send(b"CONNECT\naccept-version:1.2\nheart-beat:0,1000\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
    assert b"heart-beat:1000,0" in raw.read_until(b"\x00")
    raw.read_until(b"\n\n")  # the frame's trailing EOL, then a heart-beat EOL a second later
    raw.close()


# --- ack modes, prefetch, nack ---------------------------------------------------------------------------


def test_auto_ack_settles_on_delivery(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/auto", id="a")  # ack:auto is the default
    for i in range(3):
        conn.send("/queue/auto", f"m{i}")
    messages = rec.wait_messages(3)
    assert all("ack" not in m.headers for m in messages)
    queue = stomp_server.broker.vhosts["/"].queues["auto"]
    wait_for(lambda: stomp_server.call(lambda: queue.message_count + queue.unacked_count) == 0)


def test_client_ack_is_cumulative(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/cumulative", id="c", ack="client")
    for i in range(3):
        conn.send("/queue/cumulative", f"m{i}")
    messages = rec.wait_messages(3)
    conn.ack(messages[1].headers["ack"], receipt="acked")  # settles m0 and m1
    rec.wait_receipt("acked")
    conn.disconnect()
    assert amqp_get_next(stomp_server.port, "cumulative")[2] == b"m2"
    assert amqp_get(stomp_server.port, "cumulative")[0] is None


def test_client_individual_ack_settles_one(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/individual", id="i", ack="client-individual")
    for i in range(3):
        conn.send("/queue/individual", f"m{i}")
    messages = rec.wait_messages(3)
    conn.ack(messages[1].headers["ack"], receipt="acked")  # settles m1 only
    rec.wait_receipt("acked")
    conn.disconnect()
    method, _, body = amqp_get_next(stomp_server.port, "individual")
    assert (body, method.redelivered) == (b"m0", True)
    assert amqp_get(stomp_server.port, "individual")[2] == b"m2"


def test_nack_requeues_by_default_or_drops(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/nacked", id="n", ack="client-individual")
    conn.send("/queue/nacked", "again")
    first = rec.wait_messages(1)[0]
    conn.nack(first.headers["ack"])
    second = rec.wait_messages(2)[1]
    assert (second.body, second.headers["redelivered"]) == ("again", "true")
    conn.nack(second.headers["ack"], requeue="false", receipt="dropped")
    rec.wait_receipt("dropped")
    hold(0.2, "a dropped message must not come back")
    assert len(rec.messages) == 2


def test_prefetch_count_limits_unacked(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    for i in range(5):
        conn.send("/queue/prefetch", f"m{i}", headers={"receipt": f"s{i}"})
    rec.wait_receipt("s4")
    conn.subscribe("/queue/prefetch", id="p", ack="client-individual", headers={"prefetch-count": "2"})
    rec.wait_messages(2)
    hold(0.3, "no third message while two are unacked")
    assert len(rec.messages) == 2
    conn.ack(rec.messages[0].headers["ack"])
    assert rec.wait_messages(3)[2].body == "m2"


def test_unsubscribe_stops_delivery(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/unsub", id="u")
    conn.send("/queue/unsub", "one")
    rec.wait_messages(1)
    conn.unsubscribe("u", headers={"receipt": "gone"})
    rec.wait_receipt("gone")
    conn.send("/queue/unsub", "two", headers={"receipt": "sent"})
    rec.wait_receipt("sent")
    assert len(rec.messages) == 1
    assert amqp_get(stomp_server.port, "unsub")[2] == b"two"


# --- transactions ----------------------------------------------------------------------------------------


def test_transaction_commit_and_abort(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.begin("t1")
    conn.send("/queue/tx", "in t1", transaction="t1")
    conn.begin("t2")
    conn.send("/queue/tx", "in t2", transaction="t2")
    conn.abort("t2")
    conn.send("/queue/tx", "outside", headers={"receipt": "o"})
    rec.wait_receipt("o")
    assert amqp_get(stomp_server.port, "tx")[2] == b"outside"
    assert amqp_get(stomp_server.port, "tx")[0] is None  # t1 not committed yet
    conn.commit("t1", headers={"receipt": "c"})
    rec.wait_receipt("c")
    assert amqp_get(stomp_server.port, "tx")[2] == b"in t1"
    assert amqp_get(stomp_server.port, "tx")[0] is None  # t2 was aborted


def test_ack_in_a_transaction_waits_for_commit(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/txack", id="t", ack="client-individual")
    conn.send("/queue/txack", "m")
    msg = rec.wait_messages(1)[0]
    conn.begin("t")
    conn.ack(msg.headers["ack"], transaction="t")
    conn.abort("t")  # the ack is void: the message is still unacked
    conn.disconnect()
    assert amqp_get_next(stomp_server.port, "txack")[2] == b"m"


def test_unknown_transaction_is_an_error(stomp_server: ThreadedServer) -> None:
    raw = Raw(stomp_server.stomp_port)
    raw.send(b"COMMIT\ntransaction:nope\n\n\x00")
    headers, body = error_frame(raw.read_to_eof())
    assert (headers["message"], body) == ("Bad transaction", b'Invalid transaction identifier: "nope"\n')


# --- destinations ----------------------------------------------------------------------------------------


def test_topic_subscribers_each_get_a_copy(client: Callable[..., Client]) -> None:
    (a, rec_a), (b, rec_b) = client(), client()
    a.subscribe("/topic/news.*", id="a")
    b.subscribe("/topic/news.sport", id="b", receipt="b-ready")
    rec_b.wait_receipt("b-ready")
    a.send("/topic/news.sport", "goal")
    assert rec_a.wait_messages(1)[0].headers["destination"] == "/topic/news.sport"
    assert rec_b.wait_messages(1)[0].body == "goal"


def test_exchange_destination(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/exchange/amq.direct/key1", id="x", receipt="ready")
    rec.wait_receipt("ready")
    amqp = amqp_connect(stomp_server.port)
    amqp.channel().basic_publish("amq.direct", "key1", b"direct")
    amqp.close()
    msg = rec.wait_messages(1)[0]
    assert (msg.body, msg.headers["destination"]) == ("direct", "/exchange/amq.direct/key1")


def test_amq_queue_uses_an_existing_queue(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    amqp = amqp_connect(stomp_server.port)
    amqp.channel().queue_declare("made-by-amqp", arguments={"x-max-length": 10})
    amqp.close()
    conn, rec = client()
    conn.subscribe("/amq/queue/made-by-amqp", id="q")
    conn.send("/amq/queue/made-by-amqp", "via amq/queue")
    assert rec.wait_messages(1)[0].headers["destination"] == "/queue/made-by-amqp"


def test_queue_arguments_from_subscribe_headers(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/prio", id="p", headers={"x-max-priority": "5", "x-message-ttl": "60000",
                                                   "receipt": "declared"})
    rec.wait_receipt("declared")
    queue = stomp_server.broker.vhosts["/"].queues["prio"]
    assert queue.arguments == {"x-max-priority": 5, "x-message-ttl": 60000}
    assert queue.durable


def test_temp_queue_request_reply(client: Callable[..., Client]) -> None:
    (server, server_rec), (requester, rec) = client(), client()
    server.subscribe("/queue/rpc", id="srv", receipt="ready")
    server_rec.wait_receipt("ready")
    requester.send("/queue/rpc", "ping", headers={"reply-to": "/temp-queue/replies"})
    request = server_rec.wait_messages(1)[0]
    assert request.headers["reply-to"].startswith("/reply-queue/amq.gen-")
    server.send(request.headers["reply-to"], "pong")
    reply = rec.wait_messages(1)[0]
    assert (reply.body, reply.headers["subscription"]) == ("pong", "/temp-queue/replies")


def test_durable_subscription_needs_an_id(stomp_server: ThreadedServer) -> None:
    raw = Raw(stomp_server.stomp_port)
    raw.send(b"SUBSCRIBE\ndestination:/topic/t\ndurable:true\n\n\x00")
    headers, body = error_frame(raw.read_to_eof())
    assert (headers["message"], body) == ("Missing Header", b"Header 'id' is required for durable subscriptions")


# --- interoperability with AMQP ----------------------------------------------------------------------------


def test_stomp_to_amqp_keeps_properties(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.send("/queue/interop1", "body", headers={
        "content-type": "text/plain", "content-encoding": "gzip", "correlation-id": "c1", "reply-to": "/queue/rq",
        "expiration": "60000", "priority": "5", "amqp-message-id": "m1", "persistent": "true", "type": "t1",
        "user-id": "guest", "app-id": "a1", "timestamp": "1700000000", "custom": "v1", "receipt": "r"})
    rec.wait_receipt("r")
    _, props, body = amqp_get(stomp_server.port, "interop1")
    assert body == b"body"
    assert (props.content_type, props.content_encoding, props.correlation_id, props.reply_to) == (
        "text/plain", "gzip", "c1", "/queue/rq")
    assert (props.expiration, props.priority, props.message_id, props.delivery_mode, props.type) == (
        "60000", 5, "m1", 2, "t1")
    assert (props.user_id, props.app_id, props.timestamp) == ("guest", "a1", 1700000000)
    assert props.headers["custom"] == "v1"
    assert props.headers["receipt"] == "r"  # as RabbitMQ: every other header goes to the table


def test_amqp_to_stomp_keeps_properties(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/interop2", id="i", receipt="ready")
    rec.wait_receipt("ready")
    amqp = amqp_connect(stomp_server.port)
    props = pika.BasicProperties(content_type="application/json", content_encoding="utf8", delivery_mode=2,
                                 priority=3, correlation_id="cor", reply_to="rq2", expiration="50000",
                                 message_id="mid", timestamp=1700000001, type="ty", user_id="guest", app_id="app",
                                 headers={"h1": "s", "h2": 5, "h3": True})
    amqp.channel().basic_publish("", "interop2", b"from amqp", props)
    amqp.close()
    msg = rec.wait_messages(1)[0]
    expected = {"content-type": "application/json", "content-encoding": "utf8", "persistent": "true",
                "priority": "3", "correlation-id": "cor", "reply-to": "/reply-queue/rq2", "expiration": "50000",
                "amqp-message-id": "mid", "timestamp": "1700000001", "type": "ty", "user-id": "guest",
                "app-id": "app", "h1": "s", "h2": "5"}
    assert {k: msg.headers[k] for k in expected} == expected
    assert "h3" not in msg.headers  # as RabbitMQ: only string and integer table values become headers
    assert msg.body == "from amqp"


def test_binary_body_with_nul(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client(auto_decode=False)
    conn.subscribe("/queue/binary", id="b")
    amqp = amqp_connect(stomp_server.port)
    amqp.channel().basic_publish("", "binary", b"\x00\x01\x00\xff")
    amqp.close()
    assert rec.wait_messages(1)[0].body == b"\x00\x01\x00\xff"


# --- the management API ------------------------------------------------------------------------------------


def test_stomp_connection_in_the_management_api(make_config: Callable[..., Config]) -> None:
    server = ThreadedServer(make_config(stomp_port=0, http_port=0)).start()
    try:
        conn = stomp.Connection12([("127.0.0.1", server.stomp_port)], vhost="/")
        conn.connect("guest", "guest", wait=True)
        conn.subscribe("/queue/managed", id="m")

        def get(path: str) -> Any:
            request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}")
            request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)

        connections = wait_for(lambda: get("/api/connections"))
        (info,) = connections
        assert (info["protocol"], info["user"], info["vhost"], info["channels"]) == ("STOMP 1.2", "guest", "/", 1)
        assert info["client_properties"] == {"product": "STOMP client"}
        consumers = get("/api/consumers")
        assert [(c["queue"]["name"], c["consumer_tag"]) for c in consumers] == [("managed", "T_m")]
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert "\nrabbitmq_connections 1.0\n" in metrics
        listeners = get("/api/overview")["listeners"]
        assert {"protocol": "stomp", "port": server.stomp_port} in [
            {"protocol": item["protocol"], "port": item["port"]} for item in listeners]
        recorder = Recorder()
        conn.set_listener("recorder", recorder)
        name = urllib.parse.quote(info["name"], safe="")
        request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/api/connections/{name}",
                                         method="DELETE", headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q=",
                                                                   "X-Reason": "bye from the API"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204
        wait_for(recorder.disconnected.is_set)
        assert (recorder.errors[0].headers["message"], recorder.errors[0].body) == (
            "Connection forced", "bye from the API")
    finally:
        server.stop()


def test_closing_a_stomp_connection_from_the_management_side(stomp_server: ThreadedServer,
                                                             client: Callable[..., Client]) -> None:
    _conn, rec = client()
    session = wait_for(lambda: next(iter(stomp_server.server.stomp.connections)).session)
    stomp_server.call(session.force_close, "Closed via management plugin")
    wait_for(rec.disconnected.is_set)
    assert rec.errors[0].headers["message"] == "Connection forced"


def test_send_persistent_false_declares_an_exclusive_queue_as_rabbitmq(
        stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.send("/queue/mine", "x", headers={"persistent": "false", "receipt": "r"})
    rec.wait_receipt("r")
    queue = stomp_server.broker.vhosts["/"].queues["mine"]
    assert (queue.durable, queue.auto_delete, queue.exclusive_owner is not None) == (False, True, True)
    conn.subscribe("/queue/mine", id="s")  # the connection's own queue: no redeclare, no 405
    assert rec.wait_messages(1)[0].body == "x"
    assert not rec.errors


# --- tracking, the firehose, the audit log ------------------------------------------------------------------


def test_message_tracking_of_a_stomp_message(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/tracked", id="t", ack="client-individual")
    conn.send("/queue/tracked", "x", headers={"amqp-message-id": "stomp-1"})
    msg = rec.wait_messages(1)[0]
    conn.ack(msg.headers["ack"])

    def events() -> list[str]:
        found = stomp_server.call(lambda: stomp_server.broker.tracker.events("/", "stomp-1"))
        return [event["event"] for event in found]  # type: ignore[attr-defined]

    assert wait_for(lambda: events() == ["published", "delivered", "acked"] and events())
    delivered = stomp_server.call(lambda: stomp_server.broker.tracker.events("/", "stomp-1"))[1]  # type: ignore[index]
    assert delivered["consumer_tag"] == "T_t"


def test_firehose_sees_stomp_publishes_and_deliveries(stomp_server: ThreadedServer,
                                                      client: Callable[..., Client]) -> None:
    from leveret.core.tracing import set_tracing

    amqp = amqp_connect(stomp_server.port)
    channel = amqp.channel()
    trace_queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(trace_queue, "amq.rabbitmq.trace", "#")
    stomp_server.call(set_tracing, stomp_server.broker.vhosts["/"], True)
    conn, rec = client()
    conn.subscribe("/queue/traced", id="t")
    conn.send("/queue/traced", "seen")
    rec.wait_messages(1)
    keys: list[str] = []

    def traced() -> bool:
        method, _, _ = channel.basic_get(trace_queue, auto_ack=True)
        if method is not None:
            keys.append(method.routing_key)
        return {"publish.", "deliver.traced"} <= set(keys)

    wait_for(traced, message=f"publish and deliver traces (got {keys})")
    amqp.close()


def test_stomp_logins_in_the_audit_log(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    client()
    raw = Raw(stomp_server.stomp_port, None)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:nope\n\n\x00")
    raw.read_to_eof()
    path = stomp_server.broker.audit.path
    assert path is not None

    def events() -> list[tuple[str, str]]:
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return [(entry["event"], entry.get("protocol", "")) for entry in entries]

    wait_for(lambda: ("login", "stomp") in events() and ("login.refused", "stomp") in events(),
             message="the STOMP login and refused login in the audit file")


def test_frames_before_a_bad_one_in_the_same_read_are_handled(stomp_server: ThreadedServer) -> None:
    raw = Raw(stomp_server.stomp_port)
    raw.send(b"SEND\ndestination:/queue/before\n\nkept\x00SEND\ndestination:/queue/before\nk:\\x\n\n\x00")
    headers, _ = error_frame(raw.read_to_eof())
    assert headers["message"] == "Bad header escape"
    assert amqp_get_next(stomp_server.port, "before")[2] == b"kept"


def test_deleted_queue_cancels_the_subscription(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/doomed", id="d", receipt="ready")
    rec.wait_receipt("ready")
    amqp = amqp_connect(stomp_server.port)
    amqp.channel().queue_delete("doomed")
    amqp.close()
    error = wait_for(lambda: rec.errors)[0]
    assert (error.headers["message"], error.headers["subscription"]) == ("Server cancelled subscription", "d")
    assert error.body == ("The server has canceled a subscription.\nNo more messages will be delivered for "
                          "\"id='d'\".\n")  # RabbitMQ's text, checked against 3.10
    conn.send("/queue/other", "the connection stays open", headers={"receipt": "alive"})
    rec.wait_receipt("alive")


def test_vhost_connection_limit(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    stomp_server.call(stomp_server.broker.set_vhost_limits, "/", {"max-connections": 1})
    client()
    raw = Raw(stomp_server.stomp_port, None)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
    headers, body = error_frame(raw.read_to_eof())
    assert (headers["message"], body) == ("Bad CONNECT", b"Connection refused: vhost connection limit reached")


def test_subscription_queue_flags_as_rabbitmq(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    """(durable, auto_delete, exclusive) of the queues SUBSCRIBE and SEND declare, as RabbitMQ 3.10 declares them
    (seen through its management API)."""
    conn, rec = client()
    conn.subscribe("/topic/k1", id="a")
    conn.subscribe("/topic/k2", id="b", headers={"durable": "true"})
    conn.subscribe("/topic/k3", id="c", headers={"durable": "true", "auto-delete": "false"})
    conn.subscribe("/exchange/amq.direct/k4", id="d", headers={"durable": "true"})
    conn.subscribe("/queue/q-exclusive", id="e", headers={"exclusive": "true"})
    conn.subscribe("/queue/q-auto", id="f", headers={"auto-delete": "true", "receipt": "done"})
    rec.wait_receipt("done")

    def flags() -> dict[str, tuple[bool, bool, bool]]:
        vhost = stomp_server.broker.vhosts["/"]
        named = {b.routing_key: vhost.queues[b.destination.name] for name in ("amq.topic", "amq.direct")
                 for b in vhost.exchanges[name].bindings()}
        named.update({"e": vhost.queues["q-exclusive"], "f": vhost.queues["q-auto"]})
        return {key: (q.durable, q.auto_delete, q.exclusive_owner is not None) for key, q in named.items()}

    assert stomp_server.call(flags) == {
        "k1": (False, True, False), "k2": (True, True, False), "k3": (True, False, False),
        "k4": (True, True, False), "e": (False, False, True), "f": (True, True, False)}


def test_leveret_ctl_lists_and_closes_stomp_connections(stomp_server: ThreadedServer,
                                                       client: Callable[..., Client]) -> None:
    _conn, rec = client()

    def ctl(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "leveret", "ctl", "--data-dir", stomp_server.config.data_dir,
                                 *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    (listed,) = json.loads(ctl("list-connections", "--json"))
    assert listed["name"].endswith(f" -> 127.0.0.1:{stomp_server.stomp_port}")  # the STOMP listener's address
    assert (listed["user"], listed["channels"]) == ("guest", 1)
    assert ctl("close-connection", listed["name"], "--reason", "maintenance") == \
        f"connection '{listed['name']}' closed\n"
    wait_for(rec.disconnected.is_set)
    error = rec.errors[0]
    assert (error.headers["message"], error.body) == ("Connection forced", "maintenance")


# --- flow control, dead-lettering ---------------------------------------------------------------------------


def test_a_consumer_that_does_not_read_holds_back_its_queue(stomp_server: ThreadedServer) -> None:
    """Back-pressure as for AMQP: an auto-ack subscriber that never reads its socket gets what the socket buffers
    and about a MiB more; the rest stays in the queue instead of piling up in the broker's memory."""
    amqp = amqp_connect(stomp_server.port)
    channel = amqp.channel()
    channel.queue_declare("flooded")
    body = b"x" * 4096
    for _ in range(3000):  # 12 MB
        channel.basic_publish("", "flooded", body)
    queue = stomp_server.broker.vhosts["/"].queues["flooded"]
    wait_for(lambda: stomp_server.call(lambda: queue.message_count) == 3000)
    raw = Raw(stomp_server.stomp_port)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    raw.send(b"SUBSCRIBE\ndestination:/amq/queue/flooded\nid:s\n\n\x00")  # ack:auto, and never read
    hold(0.5, "deliveries stop once the socket and the delivery buffer are full")
    left = stomp_server.call(lambda: queue.message_count)
    assert 1000 < left < 3000  # type: ignore[operator]
    raw.close()
    amqp.close()


def test_nack_without_requeue_dead_letters(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    conn, rec = client()
    conn.subscribe("/queue/dead", id="dead")
    conn.subscribe("/queue/work", id="w", ack="client-individual",
                   headers={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
    conn.send("/queue/work", "poison")
    msg = rec.wait_messages(1)[0]
    conn.nack(msg.headers["ack"], requeue="false")
    dead = rec.wait_messages(2)[1]
    assert (dead.body, dead.headers["subscription"], dead.headers["destination"]) == ("poison", "dead", "/queue/dead")
    queue = stomp_server.broker.vhosts["/"].queues["work"]
    assert queue.arguments == {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}


def test_ack_after_unsubscribe(stomp_server: ThreadedServer, client: Callable[..., Client]) -> None:
    """Deliveries stay unacked after UNSUBSCRIBE (as after basic.cancel) and can still be acked, in the
    subscription's mode (client: cumulative)."""
    conn, rec = client()
    conn.subscribe("/queue/late", id="l", ack="client")
    for i in range(2):
        conn.send("/queue/late", f"m{i}")
    messages = rec.wait_messages(2)
    conn.unsubscribe("l")
    conn.ack(messages[1].headers["ack"], receipt="acked")  # settles both
    rec.wait_receipt("acked")
    queue = stomp_server.broker.vhosts["/"].queues["late"]
    assert stomp_server.call(lambda: queue.message_count + queue.unacked_count) == 0
    assert not rec.errors
