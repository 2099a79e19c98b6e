"""STOMP against RabbitMQ's STOMP plugin: every destination type (/queue, /amq/queue, /topic, /exchange,
/temp-queue with reply-to and /reply-queue), missing and unknown destinations, x-queue arguments on SUBSCRIBE and
durable topic subscriptions. Each scenario runs on Leveret and on RabbitMQ's plugin and the transcripts must be
equal (stompdiff.py says what is recorded and what is normalised)."""

from __future__ import annotations

import pika
import pytest
from stompdiff import StompRun, names, run_check, scenario
from stompwire import StompWire


def subscribed(run: StompRun, label: str, destination: str, sub: str = "s", **headers: str) -> StompWire:
    """A new 1.2 connection subscribed to ``destination`` (with a receipt, so the subscription is in place)."""
    client = run.connect(f"{label} connected")
    run.send(client, "SUBSCRIBE", {"id": sub, "destination": destination, "receipt": f"sub-{sub}", **headers})
    run.recv(f"{label} subscribed", client)
    return client


@scenario
def queue_send_then_subscribe(run: StompRun) -> None:
    queue = run.queue()
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "receipt": "r1"}, b"one")
    run.recv("receipt", producer)
    run.amqp_count("queued", queue, 1)
    # RabbitMQ sends SUBSCRIBE's RECEIPT before the first MESSAGE of a queue that already holds one
    consumer = subscribed(run, "consumer", f"/queue/{queue}")
    run.recv("message", consumer)
    run.amqp_count("after auto ack", queue, 0)


@scenario
def queue_subscribe_then_send(run: StompRun) -> None:
    queue = run.queue()
    consumer = subscribed(run, "consumer", f"/queue/{queue}")
    run.amqp_count("declared by subscribe", queue)
    producer = run.connect("producer")
    for body in (b"a", b"b", b"c"):
        run.send(producer, "SEND", {"destination": f"/queue/{queue}"}, body)
    run.recv_n("messages", consumer, 3)


@scenario
def queue_properties_via_amqp(run: StompRun) -> None:
    # what /queue/NAME declares: a passive declare with other flags tells durable / auto-delete apart
    queue = run.queue()
    client = run.connect("connected")
    run.send(client, "SEND", {"destination": f"/queue/{queue}", "receipt": "r"}, b"x")
    run.recv("receipt", client)
    ch = run.amqp()
    try:
        ch.queue_declare(queue, durable=False)
        run.record("redeclare non-durable", "ok")
    except pika.exceptions.ChannelClosedByBroker as exc:
        run.record("redeclare non-durable", exc.reply_code, run.text(exc.reply_text))


@scenario
def amq_queue_existing(run: StompRun) -> None:
    queue = run.queue()
    run.amqp().queue_declare(queue, arguments={"x-max-length": 5})
    client = subscribed(run, "consumer", f"/amq/queue/{queue}")
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/amq/queue/{queue}", "receipt": "r"}, b"direct")
    run.recv("receipt", producer)
    run.recv("message", client)


@scenario
def amq_queue_missing_subscribe(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": f"/amq/queue/{run.name('missing')}", "receipt": "r"})
    run.recv("reply", client)
    run.recv("then", client)


@scenario
def amq_queue_missing_send(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SEND", {"destination": f"/amq/queue/{run.name('missing')}", "receipt": "r"}, b"x")
    run.recv("reply", client)
    run.recv("then", client)


@scenario
def topic_fans_out(run: StompRun) -> None:
    key = run.name("news.sport")
    first = subscribed(run, "first", f"/topic/{key}")
    second = subscribed(run, "second", f"/topic/{key}", sub="t")
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/topic/{key}", "receipt": "r"}, b"goal")
    run.recv("receipt", producer)
    run.recv("first message", first)
    run.recv("second message", second)


@scenario
def topic_wildcards(run: StompRun) -> None:
    base = run.name("w")
    star = subscribed(run, "star", f"/topic/{base}.*")
    hash_ = subscribed(run, "hash", f"/topic/{base}.#", sub="h")
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/topic/{base}.a.b"}, b"deep")
    run.send(producer, "SEND", {"destination": f"/topic/{base}.a", "receipt": "r"}, b"shallow")
    run.recv("receipt", producer)
    run.recv("star gets shallow", star)
    run.quiet("star nothing more", star)
    run.recv_n("hash gets both", hash_, 2)


@scenario
def topic_without_subscriber_is_dropped(run: StompRun) -> None:
    key = run.name("nobody")
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/topic/{key}", "receipt": "r"}, b"lost")
    run.recv("receipt", producer)
    late = subscribed(run, "late", f"/topic/{key}")
    run.quiet("nothing", late)


@scenario
def exchange_with_pattern(run: StompRun) -> None:
    exchange = run.exchange("topic")
    consumer = subscribed(run, "consumer", f"/exchange/{exchange}/a.*")
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/exchange/{exchange}/b.x"}, b"not routed")
    run.send(producer, "SEND", {"destination": f"/exchange/{exchange}/a.x", "receipt": "r"}, b"routed")
    run.recv("receipt", producer)
    run.recv("message", consumer)
    run.quiet("nothing more", consumer)


@scenario
def exchange_fanout_no_pattern(run: StompRun) -> None:
    exchange = run.exchange("fanout")
    consumer = subscribed(run, "consumer", f"/exchange/{exchange}")
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/exchange/{exchange}", "receipt": "r"}, b"to all")
    run.recv("receipt", producer)
    run.recv("message", consumer)


@scenario
def exchange_to_amqp_queue(run: StompRun) -> None:
    queue = run.queue()
    ch = run.amqp()
    ch.queue_declare(queue)
    ch.queue_bind(queue, "amq.direct", routing_key=queue)
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/exchange/amq.direct/{queue}", "receipt": "r"}, b"via direct")
    run.recv("receipt", producer)
    run.amqp_get("amqp got", queue)


@scenario
def exchange_missing(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SEND", {"destination": f"/exchange/{run.name('nox')}/k", "receipt": "r"}, b"x")
    run.recv("reply", client)
    run.recv("then", client)


@scenario
def exchange_missing_subscribe(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": f"/exchange/{run.name('nox')}/k", "receipt": "r"})
    run.recv("reply", client)
    run.recv("then", client)


@scenario
def unknown_destination_send(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SEND", {"destination": "/nowhere/x", "receipt": "r"}, b"x")
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def unknown_destination_subscribe(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": "queue/no-slash", "receipt": "r"})
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def temp_queue_reply_to(run: StompRun) -> None:
    # the requester's reply-to /temp-queue/NAME becomes /reply-queue/<generated> on the wire; a reply sent
    # there comes back to the requester with subscription and destination naming its temp queue
    service = run.queue("service")
    server = subscribed(run, "service", f"/queue/{service}")
    requester = run.connect("requester")
    run.send(requester, "SEND", {"destination": f"/queue/{service}", "reply-to": "/temp-queue/answers",
                                 "receipt": "r"}, b"question")
    run.recv("receipt", requester)
    request = run.recv("request", server)
    assert request is not None, "the request did not arrive"
    reply_to = request.get("reply-to")
    assert reply_to is not None
    run.send(server, "SEND", {"destination": reply_to, "receipt": "r2"}, b"answer")
    run.recv("reply receipt", server)
    run.recv("reply", requester)


@scenario
def temp_queue_reply_via_amqp(run: StompRun) -> None:
    service = run.queue("service")
    ch = run.amqp()
    ch.queue_declare(service, durable=True)  # as /queue/NAME declares it
    requester = run.connect("requester")
    run.send(requester, "SEND", {"destination": f"/queue/{service}", "reply-to": "/temp-queue/r",
                                 "correlation-id": "c-1", "receipt": "r"}, b"question")
    run.recv("receipt", requester)
    method, properties, _body = ch.basic_get(service, auto_ack=True)
    run.record("amqp request", method is not None, run.text(properties.reply_to) if properties else None)
    if properties is not None and properties.reply_to:
        ch.basic_publish("", properties.reply_to, b"answer",
                         pika.BasicProperties(correlation_id=properties.correlation_id))
    run.recv("reply", requester)


@scenario
def temp_queue_subscribe_is_invalid(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": "/temp-queue/mine", "receipt": "r"})
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def reply_queue_unknown_send(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SEND", {"destination": "/reply-queue/amq.gen-nonexistent", "receipt": "r"}, b"x")
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def invalid_queue_and_topic_names(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SEND", {"destination": "/queue/", "receipt": "r1"}, b"x")
    run.recv("empty queue name", client)
    run.send(client, "SEND", {"destination": "/topic/a/b", "receipt": "r2"}, b"x")
    run.recv("slash in topic", client)
    run.bye("afterwards", client)


@scenario
def subscribe_x_queue_arguments(run: StompRun) -> None:
    queue = run.queue()
    client = run.connect("connected")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": f"/queue/{queue}", "x-max-length": "2",
                                   "x-queue-mode": "lazy", "receipt": "r"})
    run.recv("subscribed", client)
    run.send(client, "UNSUBSCRIBE", {"id": "s", "receipt": "u"})
    run.recv("unsubscribed", client)
    producer = run.connect("producer")
    for body in (b"1", b"2", b"3"):
        run.send(producer, "SEND", {"destination": f"/queue/{queue}", "x-max-length": "2"}, body)
    run.bye("producer done", producer)
    run.amqp_count("capped at 2", queue, 2)
    run.amqp_get("oldest kept", queue)
    ch = run.amqp()
    try:
        ch.queue_declare(queue, durable=True, arguments={"x-max-length": 3})
        run.record("redeclare other max-length", "ok")
    except pika.exceptions.ChannelClosedByBroker as exc:
        run.record("redeclare other max-length", exc.reply_code, run.text(exc.reply_text))


@scenario
def subscribe_x_arguments_mismatch(run: StompRun) -> None:
    queue = run.queue()
    run.amqp().queue_declare(queue, durable=True, arguments={"x-max-length": 5})
    client = run.connect("connected")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": f"/queue/{queue}", "x-max-length": "7",
                                   "receipt": "r"})
    run.recv("reply", client)
    run.recv("then", client)


@scenario
def durable_topic_subscription(run: StompRun) -> None:
    key = run.name("durable")
    sub = run.name("sub")
    headers = {"id": sub, "destination": f"/topic/{key}", "durable": "true", "auto-delete": "false",
               "ack": "client-individual"}
    first = run.connect("first connected", {"accept-version": "1.2", "host": "/", "login": "guest",
                                            "passcode": "guest", "client-id": run.name("client")})
    run.send(first, "SUBSCRIBE", {**headers, "receipt": "r1"})
    run.recv("subscribed", first)
    run.bye("away", first)
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/topic/{key}", "receipt": "r2"}, b"while away")
    run.recv("sent", producer)
    back = run.connect("back connected", {"accept-version": "1.2", "host": "/", "login": "guest",
                                          "passcode": "guest", "client-id": run.name("client")})
    run.send(back, "SUBSCRIBE", {**headers, "receipt": "r3"})
    run.recv_n("back", back, 2, sort=True)
    run.send(back, "UNSUBSCRIBE", {"id": sub, "durable": "true", "receipt": "r4"})
    run.recv("unsubscribed", back)
    run.send(producer, "SEND", {"destination": f"/topic/{key}", "receipt": "r5"}, b"after unsubscribe")
    run.recv("sent again", producer)
    again = run.connect("again connected", {"accept-version": "1.2", "host": "/", "login": "guest",
                                            "passcode": "guest", "client-id": run.name("client")})
    run.send(again, "SUBSCRIBE", {**headers, "receipt": "r6"})
    run.recv("resubscribed", again)
    run.quiet("nothing kept", again)
    run.send(again, "UNSUBSCRIBE", {"id": sub, "durable": "true", "receipt": "r7"})
    run.recv("cleaned", again)


@scenario
def durable_with_persistent_header(run: StompRun) -> None:
    # RabbitMQ also takes persistent:true (the older header) for a durable topic subscription
    key = run.name("persistent")
    sub = run.name("sub")
    headers = {"id": sub, "destination": f"/topic/{key}", "persistent": "true", "auto-delete": "false"}
    first = run.connect("first connected")
    run.send(first, "SUBSCRIBE", {**headers, "receipt": "r1"})
    run.recv("subscribed", first)
    run.bye("away", first)
    producer = run.connect("producer")
    run.send(producer, "SEND", {"destination": f"/topic/{key}", "receipt": "r2"}, b"kept?")
    run.recv("sent", producer)
    back = run.connect("back connected")
    run.send(back, "SUBSCRIBE", headers)
    run.recv("kept", back)
    run.send(back, "UNSUBSCRIBE", {"id": sub, "persistent": "true", "receipt": "r3"})
    run.recv("unsubscribed", back)


@scenario
def subscribe_exclusive_auto_delete_queue(run: StompRun) -> None:
    queue = run.queue()
    client = run.connect("connected")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": f"/queue/{queue}", "exclusive": "true",
                                   "auto-delete": "true", "durable": "false", "receipt": "r"})
    run.recv("subscribed", client)
    run.amqp_count("from another connection", queue)
    run.bye("gone", client)
    run.amqp_count("after the subscriber left", queue)


@scenario
def unsubscribe_by_destination_10(run: StompRun) -> None:
    queue = run.queue()
    client = run.connect("connected", {"accept-version": "1.0", "host": "/", "login": "guest", "passcode": "guest"})
    run.send(client, "SUBSCRIBE", {"destination": f"/queue/{queue}", "receipt": "s"})
    run.recv("subscribed", client)
    run.send(client, "UNSUBSCRIBE", {"destination": f"/queue/{queue}", "receipt": "u"})
    run.recv("unsubscribed", client)
    run.amqp_count("no consumer left", queue)


@scenario
def durable_without_id_is_an_error(run: StompRun) -> None:
    client = run.connect("connected", {"accept-version": "1.0", "host": "/", "login": "guest", "passcode": "guest"})
    run.send(client, "SUBSCRIBE", {"destination": f"/topic/{run.name('k')}", "durable": "true",
                                   "auto-delete": "false", "receipt": "r"})
    run.recv("reply", client)
    run.bye("afterwards", client)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", names(__name__))
def test_stomp_destinations(name: str, stomp_broker: tuple[int, int]) -> None:
    run_check(name, stomp_broker)
