"""RabbitMQ 3.10's semantics in the corners (issue 19): channel-wide prefetch, transactions, length limits after a
requeue, old-style ``x-death`` headers, queue leases, consumer priority validation, direct reply-to names, CC/BCC
across exchange-to-exchange bindings, names with CR/LF, a client whose TCP window is full, the version string.

Each behaviour is a differential scenario (``differential/scenarios_corners.py``, run by the one runner
``differential/test_scenarios.py``: the same client script against the reference RabbitMQ on 127.0.0.1:5672 and
against a fresh Leveret, transcripts compared exactly), or a test here taking ``broker_port`` with concrete expected
values. RabbitMQ's behaviour is the answer; every comparison is skipped,
never faked, when RabbitMQ is not running.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pika
import pika.exceptions
import pytest
from conftest import require_rabbitmq

from leveret import __version__
from leveret.config import Config
from leveret.node import ThreadedServer

from harness import Run, bodies, drain, props, publish
from httphelp import Client
from rawamqp import RawClient
from waiting import hold, poll, wait_for

RABBITMQ_HTTP_PORT = 15672


@pytest.fixture(params=["leveret", "rabbitmq"])
def http_port(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Iterator[int]:
    if request.param == "rabbitmq":
        require_rabbitmq()
        try:
            status, value, _ = Client(RABBITMQ_HTTP_PORT).request("GET", "/api/overview")
        except OSError:
            status, value = 0, None
        if status != 200 or not isinstance(value, dict) or value.get("product_name") != "RabbitMQ":
            pytest.skip("no RabbitMQ management API on 127.0.0.1:15672")
        yield RABBITMQ_HTTP_PORT
        return
    server = ThreadedServer(make_config(http_port=0)).start()
    try:
        yield server.http_port
    finally:
        server.stop()


def test_names_with_crlf_http_api(http_port: int, unique: str) -> None:
    """The management API strips CR/LF where it declares and binds; lookups, publish and get take the name as
    given (so a name with CR/LF is not found there), as RabbitMQ's management plugin."""
    api = Client(http_port)
    q, x = quote(f"{unique}-h\nq", safe=""), quote(f"{unique}-h\r\nx", safe="")
    x1 = quote(f"{unique}-h\nx", safe="")
    try:
        assert api.request("PUT", f"/api/queues/%2F/{q}", {})[0] == 201
        assert api.request("PUT", f"/api/queues/%2F/{q}", {})[0] == 201  # RabbitMQ looks the name up unstripped
        assert api.get(f"/api/queues/%2F/{unique}-hq")["name"] == f"{unique}-hq"
        assert api.request("GET", f"/api/queues/%2F/{q}")[0] == 404
        assert api.request("PUT", f"/api/exchanges/%2F/{x}", {"type": "direct"})[0] == 201
        assert api.get(f"/api/exchanges/%2F/{unique}-hx")["name"] == f"{unique}-hx"
        assert api.request("POST", f"/api/bindings/%2F/e/{x1}/q/{q}", {"routing_key": "r"})[0] == 201
        bindings = api.get(f"/api/queues/%2F/{unique}-hq/bindings")
        assert [(b["source"], b["routing_key"]) for b in bindings] == [("", f"{unique}-hq"), (f"{unique}-hx", "r")]
        status, _value, _ = api.request("POST", f"/api/exchanges/%2F/{x1}/publish",
                                        {"routing_key": "r", "payload": "p", "payload_encoding": "string",
                                         "properties": {}})
        assert status in (400, 404)
        assert api.request("DELETE", f"/api/queues/%2F/{q}")[0] == 404
        assert api.request("DELETE", f"/api/exchanges/%2F/{x1}")[0] == 404
    finally:
        api.request("DELETE", f"/api/queues/%2F/{unique}-hq")
        api.request("DELETE", f"/api/exchanges/%2F/{unique}-hx")


# --- a client whose TCP window is full --------------------------------------------------------------------


def test_stalled_client_closed_on_heartbeat_timeout(broker_port: int, unique: str) -> None:
    """A client that stops reading (its receive window fills with deliveries) and stops sending is disconnected
    once its heartbeat times out: its exclusive queue goes away. RabbitMQ takes about 3 s with heartbeat 1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", broker_port))
    client = RawClient.__new__(RawClient)
    client.sock, client.buf, client.frame_max = sock, b"", 131072
    queue = f"{unique}-stalled"
    try:
        client.handshake(heartbeat=1)
        client.open_channel(1)
        client.send_method(1, "queue.declare", 0, queue, False, False, True, False, False, {})
        assert client.recv_method() == (1, "queue.declare-ok", (queue, 0, 0))
        for _ in range(100):
            client.publish(1, "", queue, b"x" * 100_000)
        client.send_method(1, "basic.consume", 0, queue, "", False, True, False, False, {})
        # from here on the client neither reads nor writes
        observer = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port, heartbeat=0))
        def gone() -> bool:
            ch = observer.channel()
            try:
                ch.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                return exc.reply_code == 404
            ch.close()
            return False

        try:
            wait_for(gone, 20, "the stalled connection (and its exclusive queue) is still there", interval=0.2)
        finally:
            observer.close()
    finally:
        sock.close()


def test_leveret_reports_its_own_version(leveret: ThreadedServer) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leveret.port, connection_attempts=1))
    try:
        server = {k: v.decode() if isinstance(v, bytes) else v for k, v in conn._impl.server_properties.items()}
    finally:
        conn.close()
    assert server["product"] == "Leveret"
    assert server["leveret-version"] == __version__
    assert __version__ in server["information"]
    assert server["version"] == "3.10.8"


# --- concrete expectations (run on Leveret and RabbitMQ alike, so that Leveret is checked without RabbitMQ too) ---


def test_tx_double_ack_fails_and_acked_message_is_not_recovered(broker: Run) -> None:
    conn = broker.connect()
    q = broker.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    publish(broker.confirmed(conn), q, b"1", b"2")
    ch.tx_select()
    first = ch.basic_get(q)[0].delivery_tag
    ch.basic_get(q)
    ch.basic_ack(first)
    ch.basic_recover(requeue=True)  # only "2" comes back: "1" is acked (not yet committed)
    assert bodies(conn.channel(), q) == [b"2"]
    ch.basic_ack(first)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        ch.tx_commit()
    assert (closed.value.reply_code, closed.value.reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 1")
    assert broker.counts(q)[:2] == ("count", 1)  # the uncommitted ack is void: "1" is requeued with the channel


def test_qos_global_holds_back_a_no_ack_consumer(broker: Run) -> None:
    conn = broker.connect()
    loader = broker.confirmed(conn)
    held_q, free_q = broker.queue("held"), broker.queue("free")
    for q in (held_q, free_q):
        loader.queue_declare(q, exclusive=True)
    publish(loader, held_q, b"h")
    publish(loader, free_q, b"f1", b"f2")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    held: list[int] = []
    free: list[bytes] = []
    ch.basic_consume(held_q, lambda _c, m, _p, _b: held.append(m.delivery_tag))
    drain(conn, held, 1)
    ch.basic_consume(free_q, lambda _c, _m, _p, body: free.append(body), auto_ack=True)
    drain(conn, free, 2, timeout=0.3)
    assert (held, free) == ([1], [])
    ch.basic_ack(held[0])
    drain(conn, free, 2)
    assert free == [b"f1", b"f2"]


def test_drop_head_queue_stays_within_its_limit_after_a_requeue(broker: Run) -> None:
    conn = broker.connect()
    ch = broker.confirmed(conn)
    q, dl = broker.queue(), broker.queue("dl")
    ch.queue_declare(dl)
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dl})
    publish(ch, q, b"1", b"2")
    consumer = conn.channel()
    tag = consumer.basic_get(q)[0].delivery_tag
    publish(ch, q, b"3")
    consumer.basic_nack(tag, requeue=True)
    poll(lambda: broker.counts(dl)[1], lambda seen: seen == 1, 2)
    assert bodies(ch, q) == [b"2", b"3"]
    _method, properties, body = ch.basic_get(dl, auto_ack=True)
    assert body == b"1" and properties.headers["x-death"][0]["reason"] == "maxlen"


def test_cc_keys_apply_behind_an_exchange_binding(broker: Run) -> None:
    ch = broker.confirmed()
    first, second = broker.exchange("first"), broker.exchange("second")
    ch.exchange_declare(first, "direct")
    ch.exchange_declare(second, "direct")
    ch.exchange_bind(second, first, "k")
    q = broker.queue()
    ch.queue_declare(q)
    ch.queue_bind(q, second, "cc")
    ch.basic_publish(first, "k", b"m", props(headers={"CC": ["cc"]}))
    assert bodies(ch, q) == [b"m"]


def test_passive_declare_extends_the_lease(broker: Run) -> None:
    ch = broker.channel()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-expires": 300})
    for _ in range(5):
        hold(0.1, "500 ms in all, past the 300 ms lease: kept alive by the passive declares alone")
        assert broker.counts(q)[0] == "count"
    # checks further apart than the lease (passive declares would keep it alive otherwise)
    seen = poll(lambda: broker.counts(q), lambda seen: seen[0] != "count", 3, interval=0.4)
    assert seen[:2] == ("channel.close", 404)


def test_old_style_x_death_entries_are_grouped() -> None:
    from leveret.core.dead_letter import group_deaths

    a1, a2 = {"reason": "rejected", "queue": "a"}, {"reason": "rejected", "queue": "a", "time": 2}
    b = {"reason": "expired", "queue": "b"}
    counted = {"reason": "maxlen", "queue": "c", "count": 7}
    assert group_deaths([a1, b, a2]) == [{"count": 1, **b}, {"count": 2, **a1}]
    assert list(group_deaths([a1, b, a2])[1]) == ["count", "reason", "queue"]
    assert group_deaths([counted, {"reason": "maxlen", "queue": "c"}, a1]) == [{"count": 1, **a1}, counted]
    assert group_deaths([a1]) == [a1]  # one entry: left alone, as RabbitMQ
