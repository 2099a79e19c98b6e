"""The core's one publish entry (leveret.core.routing), dead-lettering (leveret.core.dead_letter) and the one
delivery step (Queue.hand_out), without sockets: the core harness (tests/support/corekit.py), a Broker on
ManualTimers with clients that record what the core sends them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leveret.core import Message, PreconditionFailed
from leveret.core.message import build_address, build_header, delivery_mode
from leveret.core.routing import HELD, Peer
from leveret.core.tracing import set_tracing

from corekit import Client, Core


def message(exchange: str, key: str, body: bytes = b"x", **properties: Any) -> Message:
    return Message(exchange, key, build_address(exchange, key), build_header(properties, len(body)), body)


def drain(queue: Any) -> list[Message]:
    taken = []
    while (msg := queue.get()) is not None:
        queue.hand_out(msg, False)
        taken.append(msg)
    return taken


@pytest.fixture
def core() -> Iterator[Core]:
    core = Core(tracking_window=3600, tracking_max_events=10_000)
    try:
        yield core
    finally:
        core.close()


@pytest.fixture
def client(core: Core) -> Client:
    return core.client()


def events(core: Core, message_id: str) -> list[str]:
    assert core.broker.tracker is not None
    return [e["event"] for e in core.broker.tracker.events("/", message_id)]


# --- the publish entry --------------------------------------------------------------------------------------------


def test_direct_publish_is_delivered_and_acked(core: Core, client: Client) -> None:
    queue = client.declare("q")
    consumer = client.channel.consume(queue, "c1", no_ack=False, exclusive=False, arguments={})
    queue.add_consumer(consumer)
    client.publish("q", b"hello", message_id="m1")
    delivered = [(d.channel, d.consumer_tag, d.delivery_tag, d.redelivered, d.body) for d in client.sink.deliveries]
    assert delivered == [(1, "c1", 1, False, b"hello")]
    assert queue.unacked_count == 1 and consumer.unacked == 1
    client.channel.ack(1, False)
    assert queue.unacked_count == 0 and consumer.unacked == 0
    assert events(core, "m1") == ["published", "delivered", "acked"]


def test_mandatory_unroutable_is_returned_once_and_confirmed(core: Core, client: Client) -> None:
    client.channel.select_confirm()
    client.publish("nowhere", b"r", exchange="amq.direct", mandatory=True, message_id="m2")
    client.publish("nowhere", b"dropped", exchange="amq.direct")
    returned = [(ch, code, text, m.routing_key, m.body) for ch, code, text, m in client.sink.returns]
    assert returned == [(1, 312, "NO_ROUTE", "nowhere", b"r")]
    assert client.sink.confirms == [(1, 1, False, True), (1, 2, False, True)]
    assert core.broker.tracker is not None
    assert core.broker.tracker.events("/", "m2")[0]["outcome"] == "returned"


def test_reject_publish_overflow_is_nacked(core: Core, client: Client) -> None:
    client.declare("full", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    client.channel.select_confirm()
    client.publish("full", b"1")
    client.publish("full", b"2")
    assert client.sink.confirms == [(1, 1, False, True), (1, 2, False, False)]


def test_fanout_copies_are_separate_records(core: Core, client: Client) -> None:
    core.vhost.declare_exchange("fan", "fanout")
    queues = [client.declare(name) for name in ("a", "b", "c")]
    for q in queues:
        core.vhost.bind_queue(q.name, "fan", "", {}, None)
    client.publish("k", b"body", exchange="fan")
    taken = [drain(q) for q in queues]
    assert [[m.body for m in t] for t in taken] == [[b"body"]] * 3
    assert len({id(t[0]) for t in taken}) == 3  # one record per queue, sharing the body bytes
    assert all(t[0].body is taken[0][0].body for t in taken)


def test_cc_routes_to_more_queues_and_bcc_is_removed(core: Core, client: Client) -> None:
    for name in ("main", "cc", "bcc"):
        client.declare(name)
    client.publish("main", b"m", headers={"CC": ["cc"], "BCC": ["bcc"], "keep": 1})
    got = {name: drain(core.vhost.queues[name]) for name in ("main", "cc", "bcc")}
    assert all(len(msgs) == 1 for msgs in got.values())
    for msgs in got.values():
        assert msgs[0].headers == {"CC": ["cc"], "keep": 1}


def test_cc_must_be_an_array(core: Core, client: Client) -> None:
    client.declare("q")
    with pytest.raises(PreconditionFailed, match='unacceptable_type_in_header,"CC"'):
        client.publish("q", b"x", headers={"CC": "q"})


def test_alternate_exchange_takes_the_unroutable(core: Core, client: Client) -> None:
    core.vhost.declare_exchange("ae", "fanout")
    core.vhost.declare_exchange("main", "direct", arguments={"alternate-exchange": "ae"})
    client.declare("spill")
    core.vhost.bind_queue("spill", "ae", "", {}, None)
    client.publish("unbound", b"u", exchange="main", mandatory=True)
    assert [m.body for m in drain(core.vhost.queues["spill"])] == [b"u"]
    assert client.sink.returns == []


@pytest.mark.parametrize("expiration, text", [
    ("soon", "invalid expiration 'soon': no_integer"),
    ("10x", "invalid expiration '10x': {leftover_string,\"x\"}"),
    ("-1", "invalid expiration '-1': {value_negative,-1}"),
])
def test_expiration_is_checked_before_a_transaction_defers_the_publish(client: Client, expiration: str,
                                                                         text: str) -> None:
    client.declare("q")
    client.channel.select_tx()
    with pytest.raises(PreconditionFailed) as raised:
        client.publish("q", b"x", expiration=expiration)
    assert raised.value.text == text
    client.publish("q", b"x", expiration="1000")
    assert client.count("q") == 0  # not before the commit
    client.channel.commit()
    assert client.count("q") == 1


def test_delayed_exchange_holds_once_and_releases_when_due(core: Core, client: Client) -> None:
    core.vhost.declare_exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    queue = client.declare("later")
    core.vhost.bind_queue("later", "dx", "k", {}, None)
    client.publish("k", b"d", exchange="dx", mandatory=True, message_id="m3", headers={"x-delay": 5000})
    assert core.broker.delays.pending == 1 and queue.message_count == 0
    assert client.sink.returns == []  # held: no basic.return
    core.advance(4.9)
    assert queue.message_count == 0
    core.advance(0.2)
    (msg,) = drain(queue)
    assert msg.headers == {"x-delay": -5000}
    assert events(core, "m3") == ["delayed", "delay_ended"]


def test_dead_letter_into_a_delayed_exchange_is_held_once(core: Core, client: Client) -> None:
    core.vhost.declare_exchange("dlx", "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    client.declare("graveyard")
    core.vhost.bind_queue("graveyard", "dlx", "", {}, None)
    source = client.declare("work", **{"x-dead-letter-exchange": "dlx"})
    client.publish("work", b"w", headers={"x-delay": 1000})
    msg = source.get()
    assert msg is not None
    source.hand_out(msg, True)
    source.drop_unacked(msg)
    assert core.broker.delays.pending == 1 and source.unacked_count == 0
    core.advance(1.5)
    (dead,) = drain(core.vhost.queues["graveyard"])
    death = dead.headers["x-death"][0]  # type: ignore[index]
    assert (death["reason"], death["queue"], int(death["count"])) == ("rejected", "work", 1)


def test_dead_letter_cycle_is_dropped_and_tracked(core: Core, client: Client) -> None:
    client.declare("loop", **{"x-message-ttl": 10, "x-dead-letter-exchange": ""})
    client.publish("loop", b"c", message_id="m4")
    core.advance(1)
    core.vhost.queues["loop"].get()  # expiry runs on access too
    assert core.vhost.queues["loop"].message_count == 0
    assert events(core, "m4")[:3] == ["published", "expired", "dead_lettered"]
    assert core.broker.tracker is not None
    assert core.broker.tracker.events("/", "m4")[2]["queues"] == []


def test_dead_letter_routing_key_and_x_death(core: Core, client: Client) -> None:
    client.declare("src", **{"x-dead-letter-exchange": "amq.direct", "x-dead-letter-routing-key": "dead"})
    client.declare("dead")
    core.vhost.bind_queue("dead", "amq.direct", "dead", {}, None)
    client.publish("src", b"z", expiration="60000")
    msg = core.vhost.queues["src"].get()
    assert msg is not None
    core.vhost.queues["src"].hand_out(msg, True)
    core.vhost.queues["src"].drop_unacked(msg)
    (dead,) = drain(core.vhost.queues["dead"])
    assert dead.routing_key == "dead" and dead.exchange == "amq.direct"
    headers = dead.headers or {}
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-death"][0]["original-expiration"] == "60000"
    assert "expiration" not in dead.properties


def test_firehose_traces_publish_and_delivery(core: Core, client: Client) -> None:
    set_tracing(core.vhost, True)
    trace = client.declare("trace")
    core.vhost.bind_queue("trace", "amq.rabbitmq.trace", "#", {}, None)
    queue = client.declare("q")
    client.publish("q", b"t")
    assert client.channel.get(queue, True) is not None
    traced = drain(trace)
    assert [m.routing_key for m in traced] == ["publish.", "deliver.q"]
    published = traced[0].headers or {}
    assert published["routed_queues"] == ["q"] and published["connection"] == "127.0.0.1:1"
    assert published["user"] == "guest" and published["channel"] == 1


def test_management_publish_origin_is_traced(core: Core, client: Client) -> None:
    set_tracing(core.vhost, True)
    trace = client.declare("trace")
    core.vhost.bind_queue("trace", "amq.rabbitmq.trace", "publish.#", {}, None)
    client.declare("q")
    routed = core.vhost.publish(core.vhost.exchanges[""], message("", "q"), Peer("http guest@local", "guest"))
    assert routed is True
    (copy,) = drain(trace)
    assert (copy.headers or {})["channel"] == 0 and (copy.headers or {})["connection"] == "http guest@local"


def test_publish_results(core: Core, client: Client) -> None:
    client.declare("q")
    vhost = core.vhost
    assert vhost.publish(vhost.exchanges[""], message("", "q")) is True
    assert vhost.publish(vhost.exchanges[""], message("", "none")) is None
    vhost.declare_exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    held = message("dx", "k", headers={"x-delay": 100})
    assert vhost.route(vhost.exchanges["dx"], held) is HELD
    assert vhost.publish(vhost.exchanges["dx"], message("dx", "k", headers={"x-delay": 100})) is True
    assert core.broker.delays.pending == 2


# --- the delivery step --------------------------------------------------------------------------------------------


def test_basic_get_reject_and_requeue_keep_unacked_count(core: Core, client: Client) -> None:
    queue = client.declare("g")
    for body in (b"1", b"2"):
        client.publish("g", body)
    first = client.channel.get(queue, False)
    second = client.channel.get(queue, False)
    assert first is not None and second is not None and queue.unacked_count == 2
    client.channel.reject(first[0], False, True)
    assert queue.unacked_count == 1 and queue.message_count == 1
    client.channel.reject(second[0], False, False)
    assert queue.unacked_count == 0 and queue.message_count == 1
    again = client.channel.get(queue, True)
    assert again is not None and again[1].redelivered and queue.unacked_count == 0


def test_quorum_delivery_count_is_bumped_once_per_delivery(core: Core, client: Client) -> None:
    queue = core.vhost.declare_queue(None, "qq", durable=True, arguments={"x-queue-type": "quorum"})
    client.publish("qq", b"q")
    counts = []
    for _ in range(3):
        got = client.channel.get(queue, False)
        assert got is not None
        counts.append(int((got[1].headers or {})["x-delivery-count"]))
        client.channel.reject(got[0], False, True)
    assert counts == [0, 1, 2]


_PROPERTY_VALUES = st.fixed_dictionaries({}, optional={
    "content_type": st.text(max_size=40),
    "content_encoding": st.text(max_size=40),
    "headers": st.dictionaries(st.text(max_size=10), st.one_of(st.integers(-2**31, 2**31 - 1), st.text(max_size=20),
                                                               st.booleans()), max_size=5),
    "delivery_mode": st.integers(0, 255),
    "priority": st.integers(0, 9),
    "correlation_id": st.text(max_size=20),
})


@given(_PROPERTY_VALUES)
def test_persistent_is_read_from_the_header_bytes_as_the_decoder_reads_it(props: dict[str, Any]) -> None:
    """Message.persistent skips content-type, content-encoding and headers by their lengths instead of decoding
    the properties: it must agree with the decoder for any combination of them."""
    header = build_header(props, 3)
    msg = Message("x", "k", build_address("x", "k"), header, b"abc")
    assert msg.persistent == (props.get("delivery_mode") == 2)
    decoded = Message("x", "k", build_address("x", "k"), header, b"abc")
    assert decoded.properties.get("delivery_mode") == props.get("delivery_mode")
    assert decoded.persistent == msg.persistent  # the decoded path gives the same answer


def test_a_truncated_header_is_not_persistent() -> None:
    header = build_header({"headers": {"a": "b" * 50}, "delivery_mode": 2}, 0)
    assert delivery_mode(header[:30], (header[12] << 8) | header[13]) == -1
