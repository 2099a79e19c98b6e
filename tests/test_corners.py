"""RabbitMQ 3.10's semantics in the corners (issue 19): channel-wide prefetch, transactions, length limits after a
requeue, old-style ``x-death`` headers, queue leases, consumer priority validation, direct reply-to names, CC/BCC
across exchange-to-exchange bindings, names with CR/LF, a client whose TCP window is full, the version string.

Each behaviour is a differential scenario (``lifecycle_scenarios.Run``: the same client script against the
reference RabbitMQ on 127.0.0.1:5672 and against a fresh Leveret, transcripts compared exactly), or a test taking
``broker_port`` with concrete expected values. RabbitMQ's behaviour is the answer; every comparison is skipped,
never faked, when RabbitMQ is not running.
"""

from __future__ import annotations

import datetime
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
import pytest
from conftest import require_rabbitmq
from pika.adapters.blocking_connection import BlockingChannel

from leveret import __version__
from leveret.config import Config
from leveret.server.app import ThreadedServer

from httphelp import Client
from lifecycle_scenarios import (
    Run,
    assert_deterministic,
    assert_same_as_rabbitmq,
    drain,
    props,
    publish,
    raw_get,
)
from rawamqp import RawClient

SCENARIOS: dict[str, Callable[[Run], None]] = {}


def scenario(fn: Callable[[Run], None]) -> Callable[[Run], None]:
    SCENARIOS[fn.__name__] = fn
    return fn


def _entries(run: Run, ch: BlockingChannel, queue: str, label: str) -> None:
    run.get_all(label, ch, queue, limit=12)


# --- channel-wide prefetch (basic.qos global=true) -------------------------------------------------------


@scenario
def qos_global_fair_across_queues(run: Run) -> None:
    """A limit of 2 shared by consumers on three queues of 30 messages each: each ack frees one slot, the next
    delivery arrives at once, the limit is never exceeded, and every queue gets its turn."""
    conn = run.connect()
    loader = run.confirmed(conn)
    queues = [run.queue(f"fair{i}") for i in range(3)]
    for q in queues:
        loader.queue_declare(q, exclusive=True)
        publish(loader, q, *(b"%s-%d" % (q[-1:].encode(), i) for i in range(30)))
    ch = conn.channel()
    run.attempt("qos", lambda: ch.basic_qos(prefetch_count=2, global_qos=True))
    received: list[tuple[int, int]] = []  # (queue index, delivery tag)
    for index, q in enumerate(queues):
        ch.basic_consume(q, lambda _c, m, _p, _b, index=index: received.append((index, m.delivery_tag)))
    drain(conn, received, 2, settle=0.2)
    run.record("first", len(received))
    acked = 0
    prompt = 0
    for _ in range(30):
        ch.basic_ack(received[acked][1])
        acked += 1
        deadline = time.monotonic() + 1.5
        while len(received) < acked + 2 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.01)
        prompt += len(received) == acked + 2
    conn.process_data_events(time_limit=0.1)
    run.record("one-delivery-per-ack", prompt, len(received) - acked)
    run.record("every-queue-served", tuple(any(i == index for i, _ in received) for index in range(3)))


@scenario
def qos_global_no_ack_consumer(run: Run) -> None:
    """A no-ack consumer does not count against the channel's limit, but while the limit is in use it gets
    nothing either; once an ack frees the limit it gets its messages. A per-consumer limit does not apply to it."""
    conn = run.connect()
    loader = run.confirmed(conn)
    acked_q, free_q = run.queue("acked"), run.queue("free")
    for q in (acked_q, free_q):
        loader.queue_declare(q, exclusive=True)
    publish(loader, acked_q, b"held")
    publish(loader, free_q, b"f1", b"f2", b"f3")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    held: list[int] = []
    free: list[bytes] = []
    ch.basic_consume(acked_q, lambda _c, m, _p, _b: held.append(m.delivery_tag))
    drain(conn, held, 1)
    ch.basic_consume(free_q, lambda _c, _m, _p, body: free.append(body), auto_ack=True)
    drain(conn, free, 3, timeout=0.5)
    run.record("while-limit-in-use", len(held), tuple(free))
    ch.basic_ack(held[0])
    drain(conn, free, 3)
    run.record("after-ack", tuple(free))
    per_consumer = conn.channel()
    per_consumer.basic_qos(prefetch_count=1)
    publish(loader, free_q, b"g1", b"g2", b"g3")
    got: list[bytes] = []
    per_consumer.basic_consume(free_q, lambda _c, _m, _p, body: got.append(body), auto_ack=True)
    ch.close()
    drain(conn, got, 3)
    run.record("per-consumer-limit-ignored", tuple(got))


@scenario
def qos_global_get_not_counted(run: Run) -> None:
    """basic.get deliveries are outside the channel's limit: they neither use it nor free it when acked."""
    conn = run.connect()
    loader = run.confirmed(conn)
    got_q, consumed_q = run.queue("got"), run.queue("consumed")
    for q in (got_q, consumed_q):
        loader.queue_declare(q, exclusive=True)
    publish(loader, got_q, b"g1", b"g2")
    publish(loader, consumed_q, b"c1", b"c2", b"c3")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    get_tag = run.get("get", ch, got_q, auto_ack=False)
    received: list[tuple[bytes, int]] = []
    ch.basic_consume(consumed_q, lambda _c, m, _p, body: received.append((body, m.delivery_tag)))
    drain(conn, received, 2, timeout=0.5)
    run.record("consumed-with-get-unacked", tuple(b for b, _ in received))
    if get_tag is not None:
        ch.basic_ack(get_tag)
    drain(conn, received, 2, timeout=0.3)
    run.record("after-get-ack", tuple(b for b, _ in received))
    ch.basic_ack(received[0][1])
    drain(conn, received, 2)
    run.record("after-consumed-ack", tuple(b for b, _ in received))


# --- transactions ----------------------------------------------------------------------------------------


@scenario
def tx_double_ack(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q)
    publish(run.confirmed(conn), q, b"1", b"2")
    ch.tx_select()
    tag = run.get("get-1", ch, q, auto_ack=False)
    run.get("get-2", ch, q, auto_ack=False)
    ch.basic_ack(tag)
    ch.basic_ack(tag)
    run.attempt("commit", ch.tx_commit)
    run.wait_count("requeued", q, 2)
    other = conn.channel()
    run.get_all("after", other, q)
    tx = conn.channel()
    publish(run.confirmed(conn), q, b"3", b"4", b"5")
    tx.tx_select()
    tags = [run.get(f"get-multi-{i}", tx, q, auto_ack=False) for i in range(3)]
    tx.basic_ack(tags[1], multiple=True)
    tx.basic_ack(tags[0])
    run.attempt("commit-multi", tx.tx_commit)
    run.wait_count("requeued-multi", q, 3)


@scenario
def tx_acked_uncommitted(run: Run) -> None:
    """An ack inside a transaction takes the delivery off the channel's unacked set at once: basic.recover and a
    get do not bring it back before the commit; a rollback returns it to the unacked set; a closed channel
    requeues it."""
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q)
    publish(run.confirmed(conn), q, b"1", b"2", b"3")
    ch.tx_select()
    tags = [run.get(f"get-{i}", ch, q, auto_ack=False) for i in range(3)]
    ch.basic_ack(tags[1])
    run.attempt("recover", lambda: ch.basic_recover(requeue=True))
    run.passive("after-recover", q)
    again = [run.get(f"again-{i}", ch, q, auto_ack=False) for i in range(3)]
    run.attempt("commit", ch.tx_commit)
    run.passive("after-commit", q)
    first = again[0]
    if first is None:
        return
    ch.basic_ack(first)
    run.attempt("rollback", ch.tx_rollback)
    run.attempt("recover-after-rollback", lambda: ch.basic_recover(requeue=True))
    run.passive("after-rollback-recover", q)
    closing = conn.channel()
    closing.tx_select()
    tags = [run.get(f"close-{i}", closing, q, auto_ack=False) for i in range(3)]
    if tags[0] is not None:
        closing.basic_ack(tags[0])
    closing.close()
    run.wait_count("after-close", q, 3)
    run.get_all("final", conn.channel(), q)


# --- x-max-length after a requeue ------------------------------------------------------------------------


@scenario
def max_length_after_requeue(run: Run) -> None:
    conn = run.connect()
    ch = run.confirmed(conn)
    dl = run.queue("dl")
    ch.queue_declare(dl)
    for overflow in ("drop-head", "reject-publish", "reject-publish-dlx"):
        for dlx in (False, True):
            q = run.queue(f"{overflow}-{'dlx' if dlx else 'plain'}")
            arguments: dict[str, Any] = {"x-max-length": 2, "x-overflow": overflow}
            if dlx:
                arguments.update({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dl})
            run.declare(f"declare-{q[-12:]}", ch, q, **arguments)
            publish(ch, q, b"1", b"2")
            consumer = conn.channel()
            tag = run.get(f"{overflow}-get", consumer, q, auto_ack=False)
            publish(ch, q, b"3")
            if tag is not None:
                consumer.basic_nack(tag, requeue=True)
            run.wait_count(f"{overflow}-{dlx}-count", q, 2)
            _entries(run, ch, q, f"{overflow}-{dlx}-left")
            if dlx:
                run.wait_count(f"{overflow}-dl-count", dl, 1 if overflow == "drop-head" else 0)
                _entries(run, ch, dl, f"{overflow}-dl")
            consumer.close()


# --- x-death written by earlier RabbitMQ versions ---------------------------------------------------------

_T = datetime.datetime(2020, 1, 2, 3, 4, 5)


@scenario
def x_death_old_style_merged(run: Run) -> None:
    """Entries of RabbitMQ before 3.5 (one per event, no count) are grouped into one per (queue, reason) with
    the events counted, then the new death is counted in."""
    ch = run.confirmed()
    src, dl = run.queue("src"), run.queue("dl")
    run.declare("declare-dl", ch, dl)
    run.declare("declare-src", ch, src, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dl})

    def old(queue: str, reason: str) -> dict[str, Any]:
        return {"reason": reason, "queue": queue, "time": _T, "exchange": "", "routing-keys": [queue]}

    histories = {
        "same": [old(src, "rejected"), old("elsewhere", "expired"), old(src, "rejected")],
        "other": [old("elsewhere", "expired"), old("elsewhere", "expired"), old("third", "maxlen")],
        "counted": [{**old(src, "rejected"), "count": 4}, old(src, "rejected"), old("elsewhere", "rejected")],
    }
    for label, deaths in histories.items():
        ch.basic_publish("", src, label.encode(), props(headers={"x-death": deaths, "k": "v"}))
        tag = run.get(f"get-{label}", ch, src, auto_ack=False)
        if tag is None:
            return
        ch.basic_reject(tag, requeue=False)
        run.wait_count(f"dl-{label}", dl, 1)
        run.record(f"raw-{label}", *raw_get(run.port, dl))


# --- queue leases ----------------------------------------------------------------------------------------


@scenario
def queue_expires_passive_declare(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue("lease")
    run.declare("declare", ch, q, **{"x-expires": 300})
    for i in range(4):
        time.sleep(0.15)
        run.passive(f"passive-{i}", q)  # 600 ms in all: only the passive declares keep it
    time.sleep(0.6)
    run.passive("after-idle", q)


# --- consumer priority validation ------------------------------------------------------------------------


@scenario
def consumer_priority_void(run: Run) -> None:
    conn = run.connect()
    q = run.queue()
    conn.channel().queue_declare(q, exclusive=True)
    ch = conn.channel()
    run.attempt("void", lambda: ch.basic_consume(q, lambda *a: None, arguments={"x-priority": None}) and None)
    ch = conn.channel()
    run.attempt("integer", lambda: ch.basic_consume(q, lambda *a: None, arguments={"x-priority": 3}) and None)


# --- direct reply-to -------------------------------------------------------------------------------------


@scenario
def reply_to_passive_declare(run: Run) -> None:
    conn = run.connect()
    requester = conn.channel()
    q = run.queue()
    requester.queue_declare(q, exclusive=True)
    requester.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=True, consumer_tag="replies")
    requester.basic_publish("", q, b"request", props(reply_to="amq.rabbitmq.reply-to"))
    method, properties, _body = requester.basic_get(q, auto_ack=True)
    name = properties.reply_to if method is not None else ""
    run.record("reply-to", name.startswith("amq.rabbitmq.reply-to."))

    def hide(text: Any) -> Any:
        return text.replace(name, "<reply-to>") if isinstance(text, str) and name else text

    def passive(label: str, ch: BlockingChannel) -> None:
        try:
            ok = ch.queue_declare(name, passive=True).method
            run.record(label, "ok", hide(ok.queue), ok.message_count, ok.consumer_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            run.record(label, exc.reply_code, hide(exc.reply_text))

    passive("passive-other-connection", run.connect().channel())
    passive("passive-same-connection", conn.channel())
    requester.basic_cancel("replies")
    passive("after-cancel", run.connect().channel())


# --- CC/BCC at every exchange on the route ---------------------------------------------------------------


@scenario
def cc_across_exchange_bindings(run: Run) -> None:
    ch = run.confirmed()
    first, second, third = run.exchange("first"), run.exchange("second"), run.exchange("third")
    ch.exchange_declare(first, "direct")
    ch.exchange_declare(second, "direct")
    ch.exchange_declare(third, "topic")
    ch.exchange_bind(second, first, "k")  # reached with the routing key
    ch.exchange_bind(third, first, "cc")  # reached with a CC key only
    queues = {label: run.queue(label) for label in ("by-k", "by-cc", "by-bcc", "third-k", "third-cc")}
    for label, q in queues.items():
        run.declare(f"declare-{label}", ch, q)
    ch.queue_bind(queues["by-k"], second, "k")
    ch.queue_bind(queues["by-cc"], second, "cc")
    ch.queue_bind(queues["by-bcc"], second, "bcc")
    ch.queue_bind(queues["third-k"], third, "k")
    ch.queue_bind(queues["third-cc"], third, "#.cc")
    ch.basic_publish(first, "k", b"cc", props(headers={"CC": ["cc"], "h": 1}))
    ch.basic_publish(first, "k", b"bcc", props(headers={"BCC": ["bcc"]}))
    ch.basic_publish(first, "nothing", b"cc-only", props(headers={"CC": ["cc"]}))
    for label, q in queues.items():
        _entries(run, ch, q, label)


# --- names with CR/LF --------------------------------------------------------------------------------------


def _raw_names(port: int, prefix: str) -> list[Any]:
    """Every method that takes a queue or exchange name, given a name with CR/LF (a raw socket: pika waits for a
    declare-ok that echoes the name it sent)."""
    out: list[Any] = []
    client = RawClient(port, timeout=3)
    channel = [1]
    q, x = f"{prefix}-que\nue", f"{prefix}-e\r\nx"
    plain_q, plain_x = q.replace("\n", ""), x.replace("\r\n", "")

    def call(label: str, name: str, *args: Any) -> None:
        client.send_method(channel[0], name, *args)
        reply = client.recv_method(timeout=3)
        assert reply is not None, label
        out.append((label, reply[1], reply[2]))
        if reply[1] == "channel.close":
            client.send_method(channel[0], "channel.close-ok")
            channel[0] += 1
            client.open_channel(channel[0])

    try:
        client.handshake()
        client.open_channel(1)
        call("declare", "queue.declare", 0, q, False, False, False, False, False, {})
        call("passive-plain", "queue.declare", 0, plain_q, True, False, False, False, False, {})
        call("passive-crlf", "queue.declare", 0, q.replace("\n", "\r\n"), True, False, False, False, False, {})
        call("exchange", "exchange.declare", 0, x, "direct", False, False, False, False, False, {})
        call("exchange-plain", "exchange.declare", 0, plain_x, "direct", True, False, False, False, False, {})
        call("bind", "queue.bind", 0, q, x.replace("\r", ""), "k\nk", False, {})
        call("exchange-bind", "exchange.bind", 0, x, "amq.dir\nect", "k", False, {})
        call("exchange-unbind", "exchange.unbind", 0, x, "amq.dir\nect", "k", False, {})
        client.publish(channel[0], plain_x, "k\nk", b"crlf-routing-key")
        client.publish(channel[0], plain_x, "kk", b"stripped-routing-key")
        client.publish(channel[0], "", q, b"default-exchange")
        call("count", "queue.declare", 0, plain_q, True, False, False, False, False, {})
        client.publish(channel[0], x, "k\nk", b"crlf-exchange")
        call("after-publish-crlf-exchange", "queue.declare", 0, plain_q, True, False, False, False, False, {})
        call("get-crlf", "basic.get", 0, q, True)
        call("consume-crlf", "basic.consume", 0, q, "", False, True, False, False, {})
        call("purge-crlf", "queue.purge", 0, q, False)
        call("unbind", "queue.unbind", 0, q, x, "k\nk", {})
        call("delete", "queue.delete", 0, q, False, False, False)
        call("deleted", "queue.declare", 0, plain_q, True, False, False, False, False, {})
        call("exchange-delete", "exchange.delete", 0, x, False, False)
        call("exchange-deleted", "exchange.declare", 0, plain_x, "direct", True, False, False, False, False, {})
    finally:
        client.close()
    return out


@pytest.mark.rabbitmq
def test_names_with_crlf_differential(leveret: ThreadedServer, unique: str) -> None:
    """RabbitMQ strips CR and LF from queue and exchange names in declare, bind, unbind and delete (not in
    publish, get, consume or purge, and never in routing keys)."""
    expected = _raw_names(require_rabbitmq(), unique)
    actual = _raw_names(leveret.port, unique)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got == want, f"entry {index} differs\n  leveret:  {got!r}\n  rabbitmq: {want!r}"


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
        try:
            deadline = time.monotonic() + 20
            code = 0
            while time.monotonic() < deadline:
                ch = observer.channel()
                try:
                    ch.queue_declare(queue, passive=True)
                    ch.close()
                except pika.exceptions.ChannelClosedByBroker as exc:
                    code = exc.reply_code
                    if code == 404:
                        break
                time.sleep(0.2)
            assert code == 404, "the stalled connection (and its exclusive queue) is still there"
        finally:
            observer.close()
    finally:
        sock.close()


# --- the version string ----------------------------------------------------------------------------------


@scenario
def server_properties_version(run: Run) -> None:
    server = run.connect()._impl.server_properties
    version = server.get("version", b"")
    version = version.decode() if isinstance(version, bytes) else version
    run.record("numeric", bool(re.fullmatch(r"\d+\.\d+\.\d+", version)))
    run.record("major.minor", version.split(".")[:2])


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


@pytest.fixture
def broker(broker_port: int, unique: str) -> Iterator[Run]:
    run = Run(broker_port, unique)
    try:
        yield run
    finally:
        run.cleanup()


def _bodies(ch: BlockingChannel, queue: str) -> list[bytes]:
    out = []
    for _ in range(20):
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append(body)
    return out


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
    assert _bodies(conn.channel(), q) == [b"2"]
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
    deadline = time.monotonic() + 2
    while broker.counts(dl)[1] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _bodies(ch, q) == [b"2", b"3"]
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
    assert _bodies(ch, q) == [b"m"]


def test_passive_declare_extends_the_lease(broker: Run) -> None:
    ch = broker.channel()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-expires": 300})
    for _ in range(5):
        time.sleep(0.1)
        assert broker.counts(q)[0] == "count"  # 500 ms: kept alive by the passive declares alone
    deadline = time.monotonic() + 3
    seen = broker.counts(q)
    while seen[0] == "count" and time.monotonic() < deadline:
        time.sleep(0.4)  # longer than the lease: these checks (passive declares) must not keep it alive
        seen = broker.counts(q)
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


# --- the differential runner -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_corners_differential(name: str, leveret: ThreadedServer, unique: str) -> None:
    assert_same_as_rabbitmq(SCENARIOS[name], leveret.port, require_rabbitmq(), unique)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_corner_is_deterministic_on_rabbitmq(name: str, rabbitmq_port: int, unique: str) -> None:
    assert_deterministic(SCENARIOS[name], rabbitmq_port, unique)
