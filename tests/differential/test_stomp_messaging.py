"""STOMP against RabbitMQ's STOMP plugin: SEND with receipts, SUBSCRIBE ack modes (auto, client = cumulative,
client-individual), NACK, prefetch-count, UNSUBSCRIBE, transactions (commit, abort, acks in a transaction),
header escaping per protocol version and content-length bodies with NULs. Each scenario runs on Leveret and on
RabbitMQ's plugin and the transcripts must be equal (stompdiff.py says what is recorded and normalised)."""

from __future__ import annotations

import pytest
from stompdiff import StompRun, names, run_check, scenario
from stompwire import Frame, StompWire


def connect(run: StompRun, label: str, version: str = "1.2") -> StompWire:
    return run.connect(label, {"accept-version": version, "host": "/", "login": "guest", "passcode": "guest"})


def fill(run: StompRun, queue: str, *bodies: bytes) -> None:
    """SEND ``bodies`` to /queue/``queue`` from a connection of their own, the last with a receipt."""
    producer = connect(run, "producer")
    for index, body in enumerate(bodies):
        headers = {"destination": f"/queue/{queue}"}
        if index == len(bodies) - 1:
            headers["receipt"] = "filled"
        run.send(producer, "SEND", headers, body)
    run.recv("filled", producer)
    run.bye("producer gone", producer)


def subscribe(run: StompRun, label: str, client: StompWire, queue: str, sub: str = "s", *, receipt: bool = True,
              **headers: str) -> None:
    """SUBSCRIBE to /queue/``queue``; with ``receipt``, wait for (and record) its RECEIPT: for an empty queue,
    so that the subscription is in place before messages are sent. On a queue that holds messages already the
    scenarios subscribe without one (whether the RECEIPT comes before the first MESSAGE is its own scenario,
    destinations/queue_send_then_subscribe)."""
    if not receipt:
        run.send(client, "SUBSCRIBE", {"id": sub, "destination": f"/queue/{queue}", **headers})
        return
    run.send(client, "SUBSCRIBE", {"id": sub, "destination": f"/queue/{queue}", "receipt": f"sub-{sub}", **headers})
    run.recv(label, client)


def ack_id(frame: Frame | None, version: str = "1.2") -> str:
    """The id an ACK/NACK names: the ``ack`` header in 1.2, ``message-id`` before ("<none>" when ``frame`` is
    not a MESSAGE with one: the transcript has recorded that already, and the scenario goes on)."""
    value = frame.get("ack" if version == "1.2" else "message-id") if frame is not None else None
    return value if frame is not None and frame.command == "MESSAGE" and value is not None else "<none>"


def nth(frames: list[Frame], index: int) -> Frame | None:
    return frames[index] if index < len(frames) else None


@scenario
def send_receipts(run: StompRun) -> None:
    queue = run.queue()
    client = connect(run, "connected")
    run.send(client, "SEND", {"destination": f"/queue/{queue}", "receipt": "first"}, b"1")
    run.send(client, "SEND", {"destination": f"/queue/{queue}"}, b"2")
    run.send(client, "SEND", {"destination": f"/queue/{queue}", "receipt": "third"}, b"3")
    run.recv_n("receipts", client, 2)
    run.amqp_count("queued", queue, 3)


@scenario
def subscribe_receipt_and_unsubscribe_receipt(run: StompRun) -> None:
    queue = run.queue()
    client = connect(run, "connected")
    subscribe(run, "subscribed", client, queue)
    run.amqp_count("one consumer", queue)
    run.send(client, "UNSUBSCRIBE", {"id": "s", "receipt": "u"})
    run.recv("unsubscribed", client)
    run.amqp_count("no consumer", queue)
    fill(run, queue, b"kept")
    run.quiet("not delivered after unsubscribe", client)
    run.amqp_count("still queued", queue, 1)


@scenario
def unsubscribe_unknown_id(run: StompRun) -> None:
    client = connect(run, "connected")
    run.send(client, "UNSUBSCRIBE", {"id": "never", "receipt": "u"})
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def ack_auto(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a", b"b")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="auto")
    run.recv_n("messages", client, 2)
    run.amqp_count("gone", queue, 0)


@scenario
def ack_client_cumulative(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a", b"b", b"c")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="client")
    frames = run.recv_n("messages", client, 3)
    run.send(client, "ACK", {"id": ack_id(nth(frames, 1)), "receipt": "acked"})
    run.recv("ack receipt", client)
    run.bye("gone", client)
    run.amqp_count("only c left", queue, 1)
    again = connect(run, "again")
    subscribe(run, "resubscribed", again, queue, receipt=False, ack="client")
    run.recv("c redelivered", again)


@scenario
def ack_client_individual(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a", b"b", b"c")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="client-individual")
    frames = run.recv_n("messages", client, 3)
    run.send(client, "ACK", {"id": ack_id(nth(frames, 1)), "receipt": "acked"})
    run.recv("ack receipt", client)
    run.bye("gone", client)
    run.amqp_count("a and c left", queue, 2)
    again = connect(run, "again")
    subscribe(run, "resubscribed", again, queue, receipt=False, ack="client-individual")
    run.recv_n("a and c redelivered", again, 2)


@scenario
def ack_version_11_message_id(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a")
    client = connect(run, "consumer", "1.1")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": f"/queue/{queue}", "ack": "client-individual"})
    frame = run.recv("message", client)
    run.send(client, "ACK", {"subscription": "s", "message-id": ack_id(frame, "1.1"), "receipt": "acked"})
    run.recv("ack receipt", client)
    run.bye("gone", client)
    run.amqp_count("acked", queue, 0)


@scenario
def ack_version_10(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a")
    client = connect(run, "consumer", "1.0")
    run.send(client, "SUBSCRIBE", {"destination": f"/queue/{queue}", "ack": "client"})
    frame = run.recv("message", client)
    run.send(client, "ACK", {"message-id": ack_id(frame, "1.0"), "receipt": "acked"})
    run.recv("ack receipt", client)
    run.bye("gone", client)
    run.amqp_count("acked", queue, 0)


@scenario
def ack_unknown_id(run: StompRun) -> None:
    client = connect(run, "connected")
    run.send(client, "ACK", {"id": "no-such-id", "receipt": "a"})
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def ack_without_id(run: StompRun) -> None:
    client = connect(run, "connected")
    run.send(client, "ACK", {"receipt": "a"})
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def nack_requeues(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="client-individual")
    frame = run.recv("message", client)
    run.send(client, "NACK", {"id": ack_id(frame)})
    redelivered = run.recv("redelivered", client)
    run.send(client, "ACK", {"id": ack_id(redelivered), "receipt": "acked"})
    run.recv("ack receipt", client)
    run.amqp_count("gone", queue, 0)


@scenario
def nack_without_requeue(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a", b"b")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="client-individual")
    frames = run.recv_n("messages", client, 2)
    run.send(client, "NACK", {"id": ack_id(nth(frames, 0)), "requeue": "false", "receipt": "nacked"})
    run.recv("nack receipt", client)
    run.quiet("not redelivered", client)
    run.bye("gone", client)
    run.amqp_count("only b left", queue, 1)


@scenario
def nack_client_mode_is_cumulative(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a", b"b", b"c")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="client", **{"prefetch-count": "3"})
    frames = run.recv_n("messages", client, 3)
    run.send(client, "NACK", {"id": ack_id(nth(frames, 1)), "requeue": "false", "receipt": "nacked"})
    run.recv("nack receipt", client)
    run.bye("gone", client)
    run.amqp_count("only c left", queue, 1)


@scenario
def prefetch_count(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a", b"b", b"c")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="client-individual", **{"prefetch-count": "1"})
    first = run.recv("first", client)
    run.quiet("held back by prefetch", client)
    run.send(client, "ACK", {"id": ack_id(first)})
    second = run.recv("second", client)
    run.send(client, "ACK", {"id": ack_id(second)})
    third = run.recv("third", client)
    run.send(client, "ACK", {"id": ack_id(third), "receipt": "done"})
    run.recv("done", client)
    run.amqp_count("empty", queue, 0)


@scenario
def redelivered_flag_after_disconnect(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="client")
    run.recv("first delivery", client)
    client.close()  # without DISCONNECT: the unacked message goes back
    run.amqp_count("back in the queue", queue, 1)
    again = connect(run, "again")
    subscribe(run, "resubscribed", again, queue, receipt=False, ack="auto")
    run.recv("redelivery", again)


@scenario
def two_subscriptions_one_connection(run: StompRun) -> None:
    first, second = run.queue("one"), run.queue("two")
    client = connect(run, "consumer")
    subscribe(run, "sub one", client, first, sub="one")
    subscribe(run, "sub two", client, second, sub="two")
    fill(run, first, b"to one")
    run.recv("from one", client)
    fill(run, second, b"to two")
    run.recv("from two", client)


@scenario
def duplicate_subscription_id(run: StompRun) -> None:
    queue = run.queue()
    client = connect(run, "consumer")
    subscribe(run, "first", client, queue)
    subscribe(run, "same id again", client, queue)
    run.bye("afterwards", client)


@scenario
def transaction_commit_delivers(run: StompRun) -> None:
    queue = run.queue()
    consumer = connect(run, "consumer")
    subscribe(run, "subscribed", consumer, queue)
    producer = connect(run, "producer")
    run.send(producer, "BEGIN", {"transaction": "tx1", "receipt": "begun"})
    run.recv("begun", producer)
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "transaction": "tx1"}, b"one")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "transaction": "tx1"}, b"two")
    run.quiet("nothing before commit", consumer)
    run.send(producer, "COMMIT", {"transaction": "tx1", "receipt": "committed"})
    run.recv("committed", producer)
    run.recv_n("delivered", consumer, 2)


@scenario
def transaction_send_receipt(run: StompRun) -> None:
    # the receipt of a SEND inside a transaction: when it comes (RabbitMQ: at COMMIT, before COMMIT's own)
    queue = run.queue()
    producer = connect(run, "producer")
    run.send(producer, "BEGIN", {"transaction": "tx1"})
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "transaction": "tx1", "receipt": "sent"}, b"one")
    run.send(producer, "COMMIT", {"transaction": "tx1", "receipt": "committed"})
    run.recv_n("receipts", producer, 2)
    run.amqp_count("delivered", queue, 1)


@scenario
def transaction_abort_discards(run: StompRun) -> None:
    queue = run.queue()
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "receipt": "declared"}, b"outside")
    run.recv("outside sent", producer)
    run.send(producer, "BEGIN", {"transaction": "tx1"})
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "transaction": "tx1"}, b"inside")
    run.send(producer, "ABORT", {"transaction": "tx1", "receipt": "aborted"})
    run.recv("aborted", producer)
    run.amqp_count("only the one outside", queue, 1)
    run.send(producer, "COMMIT", {"transaction": "tx1", "receipt": "late commit"})
    run.recv("commit after abort", producer)
    run.bye("afterwards", producer)


@scenario
def transaction_acks(run: StompRun) -> None:
    queue = run.queue()
    fill(run, queue, b"a", b"b")
    client = connect(run, "consumer")
    subscribe(run, "subscribed", client, queue, receipt=False, ack="client-individual")
    frames = run.recv_n("messages", client, 2)
    run.send(client, "BEGIN", {"transaction": "aborted"})
    run.send(client, "ACK", {"id": ack_id(nth(frames, 0)), "transaction": "aborted"})
    run.send(client, "ABORT", {"transaction": "aborted", "receipt": "aborted"})
    run.recv("aborted", client)
    run.send(client, "BEGIN", {"transaction": "committed"})
    run.send(client, "ACK", {"id": ack_id(nth(frames, 1)), "transaction": "committed"})
    run.send(client, "COMMIT", {"transaction": "committed", "receipt": "committed"})
    run.recv("committed", client)
    run.bye("gone", client)
    run.amqp_count("the aborted ack's message is back", queue, 1)
    run.amqp_get("a", queue)


@scenario
def transaction_unknown(run: StompRun) -> None:
    client = connect(run, "connected")
    run.send(client, "COMMIT", {"transaction": "never", "receipt": "c"})
    run.recv("commit unknown", client)
    run.send(client, "BEGIN", {"transaction": "twice"})
    run.send(client, "BEGIN", {"transaction": "twice", "receipt": "b"})
    run.recv("begin twice", client)
    run.bye("afterwards", client)


ESCAPED_VALUE = "colon:newline\nbackslash\\end"


@scenario
def escaping_12(run: StompRun) -> None:
    queue = run.queue()
    consumer = connect(run, "consumer")
    subscribe(run, "subscribed", consumer, queue)
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "x-odd": ESCAPED_VALUE + "\rcr",
                                "x-odd:key": "v"}, b"escaped")
    run.recv("message", consumer)


@scenario
def escaping_11(run: StompRun) -> None:
    queue = run.queue()
    consumer = connect(run, "consumer", "1.1")
    subscribe(run, "subscribed", consumer, queue)
    producer = connect(run, "producer", "1.1")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "x-odd": ESCAPED_VALUE}, b"escaped")
    run.recv("message", consumer)


@scenario
def escaping_10_raw(run: StompRun) -> None:
    # 1.0 has no escaping: a colon in a value is just part of it, a backslash is a backslash
    queue = run.queue()
    consumer = connect(run, "consumer", "1.0")
    subscribe(run, "subscribed", consumer, queue)
    producer = connect(run, "producer", "1.0")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "x-odd": "a:b\\c"}, b"raw")
    run.recv("message", consumer)


@scenario
def escaping_10_input_to_amqp(run: StompRun) -> None:
    # what a 1.0 client's backslashes become in the AMQP headers table (RabbitMQ: 1.2's unescaping, even for 1.0)
    queue = run.queue()
    producer = connect(run, "producer", "1.0")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "x-a": "a:b\\c", "x-b": "x\\ny",
                                "x-c": "p\\\\q", "x-r": "cr\\r", "receipt": "r"}, b"1.0")
    run.recv("receipt", producer)
    run.amqp_get("amqp", queue)


@scenario
def bad_escape_10(run: StompRun) -> None:
    queue = run.queue()
    producer = connect(run, "producer", "1.0")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "x-d": "bad\\q", "receipt": "r"}, b"1.0")
    run.recv("reply", producer)


@scenario
def escaping_12_to_10(run: StompRun) -> None:
    queue = run.queue()
    consumer = connect(run, "consumer", "1.0")
    subscribe(run, "subscribed", consumer, queue)
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "x-odd": "a:b\\c"}, b"from 1.2")
    run.recv("message", consumer)


@scenario
def repeated_header_first_wins(run: StompRun) -> None:
    queue = run.queue()
    consumer = connect(run, "consumer")
    subscribe(run, "subscribed", consumer, queue)
    producer = connect(run, "producer")
    run.send(producer, "SEND", [("destination", f"/queue/{queue}"), ("x-twice", "first"), ("x-twice", "second")],
             b"twice")
    run.recv("message", consumer)


@scenario
def body_with_nuls(run: StompRun) -> None:
    queue = run.queue()
    consumer = connect(run, "consumer")
    subscribe(run, "subscribed", consumer, queue)
    producer = connect(run, "producer")
    body = b"\x00a\x00\x00b\x00"
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "content-length": str(len(body)),
                                "content-type": "application/octet-stream", "receipt": "r"}, body)
    run.recv("receipt", producer)
    run.recv("message", consumer)
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "content-length": "0"}, b"")
    run.recv("empty body", consumer)


@scenario
def body_binary_to_amqp(run: StompRun) -> None:
    queue = run.queue()
    producer = connect(run, "producer")
    body = bytes(range(256))
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "content-length": str(len(body)),
                                "receipt": "r"}, body)
    run.recv("receipt", producer)
    run.amqp_get("amqp", queue)


@scenario
def large_body(run: StompRun) -> None:
    queue = run.queue()
    consumer = connect(run, "consumer")
    subscribe(run, "subscribed", consumer, queue)
    producer = connect(run, "producer")
    body = b"0123456789" * 50_000
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "content-length": str(len(body))}, body)
    run.recv("message", consumer)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", names(__name__))
def test_stomp_messaging(name: str, stomp_broker: tuple[int, int]) -> None:
    run_check(name, stomp_broker)
