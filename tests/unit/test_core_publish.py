"""The core's one publish entry (leveret.core.routing), dead-lettering (leveret.core.dead_letter) and the one
delivery step (Queue.hand_out), without sockets: a Broker on ManualTimers, sessions talking to a recording sink."""

from __future__ import annotations

from typing import Any

import pytest

from leveret.core import Broker, ManualTimers, Message, PreconditionFailed, Session, VHost
from leveret.core.message import build_address, build_header
from leveret.core.routing import HELD, Peer
from leveret.core.tracing import set_tracing


class RecordingSink:
    """What the core sends to a connection, as tuples."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send_deliver(self, channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool,
                     address: bytes, header: bytes, body: bytes) -> None:
        self.sent.append(("deliver", channel, consumer_tag[1:].decode(), delivery_tag, redelivered, body))

    def send_return(self, channel: int, reply_code: int, reply_text: str, msg: Message) -> None:
        self.sent.append(("return", channel, reply_code, reply_text, msg.routing_key, msg.body))

    def send_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        self.sent.append(("confirm", channel, delivery_tag, multiple, ack))

    def send_cancel(self, channel: int, consumer_tag: str) -> None:
        self.sent.append(("cancel", channel, consumer_tag))

    def force_close(self, reason: str) -> None:
        self.sent.append(("close", reason))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [item[1:] for item in self.sent if item[0] == kind]


class Core:
    """A broker with a manual clock and tracking on, one client session on vhost '/' and its channel 1."""

    def __init__(self) -> None:
        self.timers = ManualTimers()
        self.broker = Broker(timers=self.timers, tracking_window=3600, tracking_max_events=10_000)
        self.vhost: VHost = self.broker.vhosts["/"]
        self.sink = RecordingSink()
        self.session = Session(self.broker, self.sink, "127.0.0.1:5555")
        self.session.user = self.broker.users["guest"]
        self.session.open_vhost("/")
        self.channel = self.session.open_channel(1)

    def queue(self, name: str, **arguments: Any) -> Any:
        return self.vhost.declare_queue(None, name, arguments=arguments)

    def publish(self, exchange: str, key: str, body: bytes = b"x", *, mandatory: bool = False,
                **properties: Any) -> Message:
        msg = message(exchange, key, body, **properties)
        self.channel.publish(msg, mandatory)
        self.session.flush()
        return msg

    def events(self, message_id: str) -> list[str]:
        assert self.broker.tracker is not None
        return [e["event"] for e in self.broker.tracker.events("/", message_id)]


def message(exchange: str, key: str, body: bytes = b"x", **properties: Any) -> Message:
    return Message(exchange, key, build_address(exchange, key), build_header(properties, len(body)), body)


def drain(queue: Any) -> list[Message]:
    taken = []
    while (msg := queue.get()) is not None:
        queue.hand_out(msg, False)
        taken.append(msg)
    return taken


@pytest.fixture
def core() -> Core:
    return Core()


# --- the publish entry --------------------------------------------------------------------------------------------


def test_direct_publish_is_delivered_and_acked(core: Core) -> None:
    queue = core.queue("q")
    consumer = core.channel.consume(queue, "c1", no_ack=False, exclusive=False, arguments={})
    queue.add_consumer(consumer)
    core.publish("", "q", b"hello", message_id="m1")
    assert core.sink.of("deliver") == [(1, "c1", 1, False, b"hello")]
    assert queue.unacked_count == 1 and consumer.unacked == 1
    core.channel.ack(1, False)
    assert queue.unacked_count == 0 and consumer.unacked == 0
    assert core.events("m1") == ["published", "delivered", "acked"]


def test_mandatory_unroutable_is_returned_once_and_confirmed(core: Core) -> None:
    core.channel.select_confirm()
    core.publish("amq.direct", "nowhere", b"r", mandatory=True, message_id="m2")
    core.publish("amq.direct", "nowhere", b"dropped")
    assert core.sink.of("return") == [(1, 312, "NO_ROUTE", "nowhere", b"r")]
    assert core.sink.of("confirm") == [(1, 1, False, True), (1, 2, False, True)]
    assert core.broker.tracker is not None
    assert core.broker.tracker.events("/", "m2")[0]["outcome"] == "returned"


def test_reject_publish_overflow_is_nacked(core: Core) -> None:
    core.queue("full", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    core.channel.select_confirm()
    core.publish("", "full", b"1")
    core.publish("", "full", b"2")
    assert core.sink.of("confirm") == [(1, 1, False, True), (1, 2, False, False)]


def test_fanout_copies_are_separate_records(core: Core) -> None:
    core.vhost.declare_exchange("fan", "fanout")
    queues = [core.queue(name) for name in ("a", "b", "c")]
    for q in queues:
        core.vhost.bind_queue(q.name, "fan", "", {}, None)
    sent = core.publish("fan", "k", b"body")
    taken = [drain(q) for q in queues]
    assert [[m.body for m in t] for t in taken] == [[b"body"]] * 3
    records = [t[0] for t in taken]
    assert records[0] is sent and len({id(m) for m in records}) == 3


def test_cc_routes_to_more_queues_and_bcc_is_removed(core: Core) -> None:
    for name in ("main", "cc", "bcc"):
        core.queue(name)
    core.publish("", "main", b"m", headers={"CC": ["cc"], "BCC": ["bcc"], "keep": 1})
    got = {name: drain(core.vhost.queues[name]) for name in ("main", "cc", "bcc")}
    assert all(len(msgs) == 1 for msgs in got.values())
    for msgs in got.values():
        assert msgs[0].headers == {"CC": ["cc"], "keep": 1}


def test_cc_must_be_an_array(core: Core) -> None:
    core.queue("q")
    with pytest.raises(PreconditionFailed, match='unacceptable_type_in_header,"CC"'):
        core.publish("", "q", headers={"CC": "q"})


def test_alternate_exchange_takes_the_unroutable(core: Core) -> None:
    core.vhost.declare_exchange("ae", "fanout")
    core.vhost.declare_exchange("main", "direct", arguments={"alternate-exchange": "ae"})
    core.queue("spill")
    core.vhost.bind_queue("spill", "ae", "", {}, None)
    core.publish("main", "unbound", b"u", mandatory=True)
    assert [m.body for m in drain(core.vhost.queues["spill"])] == [b"u"]
    assert core.sink.of("return") == []


@pytest.mark.parametrize("expiration, text", [
    ("soon", "invalid expiration 'soon': no_integer"),
    ("10x", "invalid expiration '10x': {leftover_string,\"x\"}"),
    ("-1", "invalid expiration '-1': {value_negative,-1}"),
])
def test_expiration_is_checked_before_a_transaction_defers_the_publish(core: Core, expiration: str,
                                                                         text: str) -> None:
    core.queue("q")
    core.channel.select_tx()
    with pytest.raises(PreconditionFailed) as raised:
        core.publish("", "q", expiration=expiration)
    assert raised.value.text == text
    core.publish("", "q", expiration="1000")
    assert core.vhost.queues["q"].message_count == 0  # not before the commit
    core.channel.commit()
    assert core.vhost.queues["q"].message_count == 1


def test_delayed_exchange_holds_once_and_releases_when_due(core: Core) -> None:
    core.vhost.declare_exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    queue = core.queue("later")
    core.vhost.bind_queue("later", "dx", "k", {}, None)
    core.publish("dx", "k", b"d", mandatory=True, message_id="m3", headers={"x-delay": 5000})
    assert core.broker.delays.pending == 1 and queue.message_count == 0
    assert core.sink.of("return") == []  # held: no basic.return
    core.timers.advance(4.9)
    assert queue.message_count == 0
    core.timers.advance(0.2)
    (msg,) = drain(queue)
    assert msg.headers == {"x-delay": -5000}
    assert core.events("m3") == ["delayed", "delay_ended"]


def test_dead_letter_into_a_delayed_exchange_is_held_once(core: Core) -> None:
    core.vhost.declare_exchange("dlx", "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    core.queue("graveyard")
    core.vhost.bind_queue("graveyard", "dlx", "", {}, None)
    source = core.queue("work", **{"x-dead-letter-exchange": "dlx"})
    core.publish("", "work", b"w", headers={"x-delay": 1000})
    msg = source.get()
    assert msg is not None
    source.hand_out(msg, True)
    source.drop_unacked(msg)
    assert core.broker.delays.pending == 1 and source.unacked_count == 0
    core.timers.advance(1.5)
    (dead,) = drain(core.vhost.queues["graveyard"])
    death = dead.headers["x-death"][0]  # type: ignore[index]
    assert (death["reason"], death["queue"], int(death["count"])) == ("rejected", "work", 1)


def test_dead_letter_cycle_is_dropped_and_tracked(core: Core) -> None:
    core.queue("loop", **{"x-message-ttl": 10, "x-dead-letter-exchange": ""})
    core.publish("", "loop", b"c", message_id="m4")
    core.timers.advance(1)
    core.vhost.queues["loop"].get()  # expiry runs on access too
    assert core.vhost.queues["loop"].message_count == 0
    assert core.events("m4")[:3] == ["published", "expired", "dead_lettered"]
    assert core.broker.tracker is not None
    assert core.broker.tracker.events("/", "m4")[2]["queues"] == []


def test_dead_letter_routing_key_and_x_death(core: Core) -> None:
    core.queue("src", **{"x-dead-letter-exchange": "amq.direct", "x-dead-letter-routing-key": "dead"})
    core.queue("dead")
    core.vhost.bind_queue("dead", "amq.direct", "dead", {}, None)
    core.publish("", "src", b"z", expiration="60000")
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


def test_firehose_traces_publish_and_delivery(core: Core) -> None:
    set_tracing(core.vhost, True)
    trace = core.queue("trace")
    core.vhost.bind_queue("trace", "amq.rabbitmq.trace", "#", {}, None)
    queue = core.queue("q")
    core.publish("", "q", b"t")
    assert core.channel.get(queue, True) is not None
    traced = drain(trace)
    assert [m.routing_key for m in traced] == ["publish.", "deliver.q"]
    published = traced[0].headers or {}
    assert published["routed_queues"] == ["q"] and published["connection"] == "127.0.0.1:5555"
    assert published["user"] == "guest" and published["channel"] == 1


def test_management_publish_origin_is_traced(core: Core) -> None:
    set_tracing(core.vhost, True)
    trace = core.queue("trace")
    core.vhost.bind_queue("trace", "amq.rabbitmq.trace", "publish.#", {}, None)
    core.queue("q")
    routed = core.vhost.publish(core.vhost.exchanges[""], message("", "q"), Peer("http guest@local", "guest"))
    assert routed is True
    (copy,) = drain(trace)
    assert (copy.headers or {})["channel"] == 0 and (copy.headers or {})["connection"] == "http guest@local"


def test_publish_results(core: Core) -> None:
    core.queue("q")
    vhost = core.vhost
    assert vhost.publish(vhost.exchanges[""], message("", "q")) is True
    assert vhost.publish(vhost.exchanges[""], message("", "none")) is None
    vhost.declare_exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    held = message("dx", "k", headers={"x-delay": 100})
    assert vhost.route(vhost.exchanges["dx"], held) is HELD
    assert vhost.publish(vhost.exchanges["dx"], message("dx", "k", headers={"x-delay": 100})) is True
    assert core.broker.delays.pending == 2


# --- the delivery step --------------------------------------------------------------------------------------------


def test_basic_get_reject_and_requeue_keep_unacked_count(core: Core) -> None:
    queue = core.queue("g")
    for body in (b"1", b"2"):
        core.publish("", "g", body)
    first = core.channel.get(queue, False)
    second = core.channel.get(queue, False)
    assert first is not None and second is not None and queue.unacked_count == 2
    core.channel.reject(first[0], False, True)
    assert queue.unacked_count == 1 and queue.message_count == 1
    core.channel.reject(second[0], False, False)
    assert queue.unacked_count == 0 and queue.message_count == 1
    again = core.channel.get(queue, True)
    assert again is not None and again[1].redelivered and queue.unacked_count == 0


def test_quorum_delivery_count_is_bumped_once_per_delivery(core: Core) -> None:
    queue = core.vhost.declare_queue(None, "qq", durable=True, arguments={"x-queue-type": "quorum"})
    core.publish("", "qq", b"q")
    counts = []
    for _ in range(3):
        got = core.channel.get(queue, False)
        assert got is not None
        counts.append(int((got[1].headers or {})["x-delivery-count"]))
        core.channel.reject(got[0], False, True)
    assert counts == [0, 1, 2]
