"""Differential scenarios of RabbitMQ 3.10's semantics in the corners (issue 19): channel-wide prefetch,
transactions, length limits after a requeue, old-style ``x-death`` headers, queue leases, consumer priority
validation, direct reply-to names, CC/BCC across exchange-to-exchange bindings, names with CR/LF, the version
string. Registered as "corners/<name>", run against RabbitMQ and Leveret by ``test_scenarios.py`` and twice
against RabbitMQ (see ``harness.py``); the direct tests of the same corners are in ``test_corners.py``."""

from __future__ import annotations

import datetime
import re
import time
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from harness import Run, area, drain, props, publish, raw_get
from waiting import hold

scenario = area("corners", checked_twice=True)


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
    """A requeue into a queue at its x-max-length: drop-head drops (dead-letters) the head and keeps 2; the
    reject-publish modes only refuse publishes, so the requeued message makes 3 (the wait is for that count, the
    transcript records what was seen either way)."""
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
            run.wait_count(f"{overflow}-{dlx}-count", q, 2 if overflow == "drop-head" else 3)
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
    for i in range(4):  # the lease is what is tested: fixed waits
        hold(0.15, "600 ms in all, past the 300 ms lease: only the passive declares keep the queue")
        run.passive(f"passive-{i}", q)
    hold(0.6, "idle past the lease: the queue goes")
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


@scenario
def names_with_crlf(run: Run) -> None:
    """Every method that takes a queue or exchange name, given a name with CR/LF (a raw socket: pika waits for a
    declare-ok that echoes the name it sent). RabbitMQ strips CR and LF from queue and exchange names in declare,
    bind, unbind and delete (not in publish, get, consume or purge, and never in routing keys)."""
    client = run.raw(timeout=3)
    channel = [1]
    q, x = f"{run.prefix}-que\nue", f"{run.prefix}-e\r\nx"
    plain_q, plain_x = q.replace("\n", ""), x.replace("\r\n", "")
    run.queues.add(plain_q)  # deleted at cleanup should the scenario stop half-way
    run.exchanges.add(plain_x)

    def call(label: str, name: str, *args: Any) -> None:
        client.send_method(channel[0], name, *args)
        reply = client.recv_method(timeout=3)
        assert reply is not None, label
        run.record(label, reply[1], reply[2])
        if reply[1] == "channel.close":
            client.send_method(channel[0], "channel.close-ok")
            channel[0] += 1
            client.open_channel(channel[0])

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


# --- the version string ----------------------------------------------------------------------------------


@scenario
def server_properties_version(run: Run) -> None:
    server = run.connect()._impl.server_properties
    version = server.get("version", b"")
    version = version.decode() if isinstance(version, bytes) else version
    run.record("numeric", bool(re.fullmatch(r"\d+\.\d+\.\d+", version)))
    run.record("major.minor", version.split(".")[:2])
