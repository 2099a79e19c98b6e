"""Message lifecycle, as RabbitMQ 3.10 does it: per-queue and per-message TTL, queue expiry, dead-lettering
(reasons rejected, expired, maxlen; the x-death header to the field; cycles), length limits and overflow
modes, priority queues, consumer priorities, single active consumer, alternate exchanges, CC/BCC.

Direct tests taking ``broker_port``: concrete expected values, run once against Leveret and once against
RabbitMQ. The differential scenarios of the same behaviours (transcripts compared with RabbitMQ's) are in
``differential/scenarios_lifecycle.py``, run by ``differential/test_scenarios.py``.

Not covered: ``x-delivery-limit``. RabbitMQ 3.10 refuses it on a classic queue, whatever its value:
406 "PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue 'q' in vhost '/' of queue type
rabbit_classic_queue" (it is a quorum-queue argument). Leveret implements it as an extension, tested
elsewhere.
"""

from __future__ import annotations

import datetime
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from harness import TIME, Confirms, Run, bodies, drain, props, publish, raw_get
from scenarios_lifecycle import sac_consumers
from waiting import hold, poll

# --- direct tests: helpers ------------------------------------------------------------------------------


def count(broker: Run, queue: str) -> int | None:
    """Ready messages in ``queue``, None when it does not exist (404)."""
    seen = broker.counts(queue)
    if seen[0] == "count":
        return int(seen[1])
    assert seen[:2] == ("channel.close", 404), seen
    return None


def wait_count(broker: Run, queue: str, expected: int, timeout: float = 1.5) -> int | None:
    """Poll ``count`` until it is ``expected`` (or the deadline); the last count."""
    return poll(lambda: count(broker, queue), lambda seen: seen == expected, timeout, 0.02)


def fetch(ch: BlockingChannel, queue: str) -> tuple[Any, pika.BasicProperties, bytes]:
    method, properties, body = ch.basic_get(queue, auto_ack=True)
    assert method is not None, f"{queue} is empty"
    return method, properties, body


def without_times(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` with the ``time`` of each x-death entry replaced by TIME, after checking it is a
    timestamp (pika decodes AMQP timestamps as datetimes)."""
    out = dict(headers)
    if "x-death" in out:
        deaths = []
        for entry in out["x-death"]:
            entry = dict(entry)
            assert isinstance(entry.get("time"), datetime.datetime), entry
            entry["time"] = TIME
            deaths.append(entry)
        out["x-death"] = deaths
    return out


def dead_letter_pair(broker: Run, ch: BlockingChannel, **source_arguments: Any) -> tuple[str, str]:
    """A dead-letter target queue and a source queue dead-lettering into it through the default exchange."""
    src, dl = broker.queue("src"), broker.queue("dl")
    ch.queue_declare(dl)
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dl,
                                     **source_arguments})
    return src, dl


FIRST_DEATH_ORDER = ["count", "reason", "queue", "time", "exchange", "routing-keys"]
SORTED_DEATH_ORDER = ["count", "exchange", "queue", "reason", "routing-keys", "time"]


# --- TTL --------------------------------------------------------------------------------------------------


def test_queue_ttl_drops_expired_messages(broker: Run) -> None:
    ch = broker.confirmed()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    publish(ch, q, b"1", b"2", b"3")
    assert count(broker, q) == 3
    assert wait_count(broker, q, 0) == 0
    assert ch.basic_get(q, auto_ack=True)[0] is None
    publish(ch, q, b"4")
    assert bodies(ch, q) == [b"4"]


def test_message_that_expired_while_unacked_is_dropped_when_requeued(broker: Run) -> None:
    ch = broker.confirmed()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    publish(ch, q, b"held")
    method, _props, body = ch.basic_get(q)
    assert body == b"held"
    hold(0.15, "its 100 ms TTL runs out while it is unacked")
    ch.basic_nack(method.delivery_tag, requeue=True)
    ch.queue_declare(q, passive=True)  # a round trip on the nacking channel: the nack has been handled
    assert count(broker, q) == 0
    assert ch.basic_get(q)[0] is None


def test_per_message_ttl_expires_only_at_the_head(broker: Run) -> None:
    """Classic queues drop an expired message when it reaches the head: one behind a longer-lived message
    stays (and is counted) until then."""
    ch = broker.confirmed()
    q = broker.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"long", props(expiration="10000"))
    ch.basic_publish("", q, b"short", props(expiration="50"))
    ch.basic_publish("", q, b"none")
    hold(0.15, '"short" (50 ms) expires behind "long": it must not be dropped before it reaches the head')
    assert count(broker, q) == 3
    method, properties, body = fetch(ch, q)
    assert (body, method.message_count, properties.expiration) == (b"long", 1, "10000")
    assert count(broker, q) == 1
    method, _props, body = fetch(ch, q)
    assert (body, method.message_count) == (b"none", 0)
    assert ch.basic_get(q)[0] is None


def test_effective_ttl_is_the_lower_of_queue_and_message_ttl(broker: Run) -> None:
    ch = broker.confirmed()
    lower, higher = broker.queue("lower"), broker.queue("higher")
    ch.queue_declare(lower, arguments={"x-message-ttl": 100})
    ch.queue_declare(higher, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", lower, b"a", props(expiration="60000"))
    ch.basic_publish("", higher, b"b", props(expiration="50"))
    ch.basic_publish("", higher, b"c")
    assert wait_count(broker, lower, 0) == 0  # 100 ms
    assert wait_count(broker, higher, 1) == 1  # 50 ms for "b"
    assert bodies(ch, higher) == [b"c"]


def test_expiration_zero_is_delivered_only_to_a_ready_consumer(broker: Run) -> None:
    conn = broker.connect()
    ch = broker.confirmed(conn)
    q = broker.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"alone", props(expiration="0"))
    assert count(broker, q) == 0
    assert ch.basic_get(q)[0] is None
    received: list[Any] = []
    conn.channel().basic_consume(q, lambda _c, _m, p, body: received.append((body, p.expiration)), auto_ack=True)
    ch.basic_publish("", q, b"consumed", props(expiration="0"))
    drain(conn, received, 1)
    assert received == [(b"consumed", "0")]


def test_queue_ttl_zero_dead_letters_what_no_consumer_can_take(broker: Run) -> None:
    conn = broker.connect()
    ch = broker.confirmed(conn)
    src, dl = dead_letter_pair(broker, ch, **{"x-message-ttl": 0})
    ch.basic_publish("", src, b"nobody")
    assert wait_count(broker, dl, 1) == 1
    received: list[bytes] = []
    consumer = broker.connect().channel()
    consumer.basic_qos(prefetch_count=1)
    consumer.basic_consume(src, lambda _c, _m, _p, body: received.append(body))
    publish(ch, src, b"a", b"b", b"c")
    drain(consumer.connection, received, 1, settle=0.2)
    assert received == [b"a"]
    assert wait_count(broker, dl, 3) == 3
    _method, properties, body = fetch(ch, dl)
    assert body == b"nobody"
    assert properties.headers["x-death"][0]["reason"] == "expired"
    assert bodies(ch, dl) == [b"b", b"c"]


# --- queue expiry -----------------------------------------------------------------------------------------


def test_unused_queue_expires_even_with_messages(broker: Run) -> None:
    ch = broker.confirmed()
    empty, loaded = broker.queue("empty"), broker.queue("loaded")
    ch.queue_declare(empty, arguments={"x-expires": 200})
    ch.queue_declare(loaded, arguments={"x-expires": 200})
    publish(ch, loaded, b"m")
    assert count(broker, loaded) == 1
    hold(0.45, "both are left unused past their 200 ms lease (a passive declare would renew it: no polling)")
    assert count(broker, empty) is None
    assert count(broker, loaded) is None


def test_consumer_keeps_an_expiring_queue_alive(broker: Run) -> None:
    ch = broker.channel()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-expires": 200})
    ch.basic_consume(q, lambda *a: None, consumer_tag="keeper")
    hold(0.45, "past the 200 ms lease, kept by the consumer alone")
    assert broker.counts(q) == ("count", 0, 1)
    ch.basic_cancel("keeper")
    hold(0.45, "unused past the lease after the cancel (a passive declare would renew it: no polling)")
    assert count(broker, q) is None


def test_basic_get_keeps_an_expiring_queue_alive(broker: Run) -> None:
    ch = broker.channel()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-expires": 200})
    for _ in range(4):
        hold(0.1, "the 200 ms lease is renewed by basic.get")
        assert ch.basic_get(q)[0] is None
    hold(0.05, "450 ms after the declare, 50 ms after the last basic.get")
    assert count(broker, q) == 0
    hold(0.45, "unused past the lease (a passive declare would renew it: no polling)")
    assert count(broker, q) is None


# --- dead-lettering ---------------------------------------------------------------------------------------

HEADERS = {"zz": "last", "a": 1, "x-first-death-reason": "forged", "CC": ["cc-key"], "BCC": ["bcc-key"]}
RICH = {"content_type": "text/plain", "delivery_mode": 2, "priority": 3, "correlation_id": "corr",
        "reply_to": "replies", "expiration": "60000", "message_id": "mid", "timestamp": 1700000000,
        "type": "kind", "app_id": "app"}


@pytest.mark.parametrize("how", ["reject", "nack", "nack-multiple"])
def test_rejected_message_is_dead_lettered_with_exact_headers(broker: Run, how: str) -> None:
    ch = broker.confirmed()
    dlx, src, dl = broker.exchange("dlx"), broker.queue("src"), broker.queue("dl")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(dl)
    ch.queue_bind(dl, dlx, src)
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": dlx})
    publish(ch, src, b"1", b"2", properties=props(headers=HEADERS, **RICH))
    first = ch.basic_get(src)[0].delivery_tag
    second = ch.basic_get(src)[0].delivery_tag
    if how == "reject":
        ch.basic_reject(first, requeue=False)
        ch.basic_reject(second, requeue=False)
    elif how == "nack":
        ch.basic_nack(first, requeue=False)
        ch.basic_nack(second, requeue=False)
    else:
        ch.basic_nack(second, multiple=True, requeue=False)
    assert wait_count(broker, dl, 2) == 2
    assert count(broker, src) == 0
    for expected_body in (b"1", b"2"):
        method, properties, body = fetch(ch, dl)
        assert (body, method.exchange, method.routing_key, method.redelivered) == (expected_body, dlx, src, False)
        headers = without_times(properties.headers)
        assert headers == {
            "CC": ["cc-key"],
            "a": 1,
            "x-death": [{"count": 1, "reason": "rejected", "queue": src, "time": TIME, "exchange": "",
                         "routing-keys": [src, "cc-key"], "original-expiration": "60000"}],
            "x-first-death-exchange": "",
            "x-first-death-queue": src,
            "x-first-death-reason": "rejected",
            "zz": "last",
        }
        assert list(properties.headers) == sorted(properties.headers)  # re-sorted, as RabbitMQ does
        assert list(properties.headers["x-death"][0]) == [*FIRST_DEATH_ORDER, "original-expiration"]
        assert not [key for key in properties.headers if key.startswith("x-last-death")]  # 3.13 and later
        expected = dict(RICH, expiration=None)
        assert {name: getattr(properties, name) for name in RICH} == expected


def test_x_death_field_types_on_the_wire(broker: Run) -> None:
    ch = broker.confirmed()
    src, dl = dead_letter_pair(broker, ch)
    ch.basic_publish("", src, b"typed", props(headers={"CC": ["cc-key"], "n": 5, "flag": True, "zz": None},
                                              expiration="80", priority=1))
    assert wait_count(broker, dl, 1) == 1
    s = src.encode()
    assert raw_get(broker.port, dl) == ("get-ok", False, "", dl, (
        ("headers", (
            ("flag", ("t", True)),
            ("n", ("I", 5)),
            ("x-death", ("A", ("F",
                               ("count", ("l", 1)),
                               ("reason", ("S", b"expired")),
                               ("queue", ("S", s)),
                               ("time", ("T", TIME)),
                               ("exchange", ("S", b"")),
                               ("routing-keys", ("A", ("S", s), ("S", b"cc-key"))),
                               ("original-expiration", ("S", b"80"))))),
            ("x-first-death-exchange", ("S", b"")),
            ("x-first-death-queue", ("S", s)),
            ("x-first-death-reason", ("S", b"expired")),
            ("zz", ("V",)))),  # CC is removed: the queue has a dead-letter routing key
        ("priority", 1)), b"typed")


def test_expired_messages_are_dead_lettered_with_original_expiration(broker: Run) -> None:
    ch = broker.confirmed()
    src, dl = dead_letter_pair(broker, ch, **{"x-message-ttl": 500})
    ch.basic_publish("", src, b"long", props(expiration="1000", message_id="m1"))
    ch.basic_publish("", src, b"short", props(expiration="50"))
    ch.basic_publish("", src, b"none")
    hold(0.15, '"short" (50 ms) has expired but must wait behind "long" (500 ms)')
    assert (count(broker, src), count(broker, dl)) == (3, 0)
    assert wait_count(broker, dl, 3) == 3
    seen = []
    for _ in range(3):
        _method, properties, body = fetch(ch, dl)
        (death,) = properties.headers["x-death"]
        seen.append((body, death["reason"], death.get("original-expiration"), properties.expiration))
    assert seen == [(b"long", "expired", "1000", None), (b"short", "expired", "50", None),
                    (b"none", "expired", None, None)]


def test_requeued_expired_message_is_dead_lettered_as_expired(broker: Run) -> None:
    ch = broker.confirmed()
    src, dl = dead_letter_pair(broker, ch, **{"x-message-ttl": 100})
    publish(ch, src, b"requeued", b"rejected")
    first = ch.basic_get(src)[0].delivery_tag
    second = ch.basic_get(src)[0].delivery_tag
    hold(0.15, "their 100 ms TTL runs out while they are unacked")
    ch.basic_nack(first, requeue=True)
    ch.basic_reject(second, requeue=False)
    assert wait_count(broker, dl, 2) == 2
    reasons = []
    for _ in range(2):
        _method, properties, body = fetch(ch, dl)
        reasons.append((body, properties.headers["x-death"][0]["reason"]))
    assert reasons == [(b"requeued", "expired"), (b"rejected", "rejected")]


def test_x_death_count_grows_for_the_same_queue_and_reason(broker: Run) -> None:
    ch = broker.confirmed()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": ""})  # dead-letters to itself, by its name
    ch.basic_publish("", q, b"again", props(headers={"keep": "me"}))
    for _ in range(3):
        method, _props, _body = ch.basic_get(q)
        ch.basic_reject(method.delivery_tag, requeue=False)
        assert wait_count(broker, q, 1) == 1
    method, properties, body = fetch(ch, q)
    assert (body, method.redelivered) == (b"again", False)
    assert without_times(properties.headers) == {
        "keep": "me",
        "x-death": [{"count": 3, "exchange": "", "queue": q, "reason": "rejected", "routing-keys": [q],
                     "time": TIME}],
        "x-first-death-exchange": "", "x-first-death-queue": q, "x-first-death-reason": "rejected",
    }
    assert list(properties.headers["x-death"][0]) == SORTED_DEATH_ORDER  # an updated entry is re-sorted


def test_x_death_lists_the_latest_death_first(broker: Run) -> None:
    """A expires into B, B's consumer rejects back into A, A expires into B again: a cycle with a reject in
    it goes on. The entry for (A, expired) is counted twice and moved to the front."""
    ch = broker.confirmed()
    a, b = broker.queue("A"), broker.queue("B")
    ch.queue_declare(a, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": b})
    ch.queue_declare(b, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    ch.basic_publish("", a, b"cycle", props(headers={"zz": 1, "a": 2}))
    assert wait_count(broker, b, 1) == 1
    method, properties, _body = ch.basic_get(b)
    assert [(d["queue"], d["reason"], d["count"]) for d in properties.headers["x-death"]] == [(a, "expired", 1)]
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.queue_declare(b, passive=True)  # a round trip on the rejecting channel: the reject has been handled
    assert wait_count(broker, b, 1) == 1
    _method, properties, _body = fetch(ch, b)
    assert without_times(properties.headers) == {
        "a": 2,
        "x-death": [
            {"count": 2, "exchange": "", "queue": a, "reason": "expired", "routing-keys": [a], "time": TIME},
            {"count": 1, "exchange": "", "queue": b, "reason": "rejected", "routing-keys": [b], "time": TIME},
        ],
        "x-first-death-exchange": "", "x-first-death-queue": a, "x-first-death-reason": "expired",
        "zz": 1,
    }
    assert [list(entry) for entry in properties.headers["x-death"]] == [SORTED_DEATH_ORDER] * 2
    assert list(properties.headers) == sorted(properties.headers)


def test_fully_automatic_dead_letter_cycle_drops_the_message(broker: Run) -> None:
    """Expirations are per message (dead-lettering removes them): without cycle detection the message
    would stay in A for good."""
    ch = broker.confirmed()
    a, b = broker.queue("A"), broker.queue("B")
    ch.queue_declare(a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    ch.queue_declare(b, arguments={"x-message-ttl": 300, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": a})
    ch.basic_publish("", a, b"round", props(expiration="100"))
    assert wait_count(broker, b, 1) == 1
    assert count(broker, a) == 0
    assert wait_count(broker, b, 0) == 0
    hold(0.1, "the message must NOT come back to A")
    assert count(broker, a) == 0
    self_loop = broker.queue("self")
    ch.queue_declare(self_loop, arguments={"x-dead-letter-exchange": ""})
    ch.basic_publish("", self_loop, b"self", props(expiration="100"))
    assert wait_count(broker, self_loop, 0) == 0
    hold(0.1, "the message must NOT come back to its own queue")
    assert count(broker, self_loop) == 0


def test_dead_letter_cycle_is_detected_per_target_queue(broker: Run) -> None:
    ch = broker.confirmed()
    fan, c, other = broker.exchange("fan"), broker.queue("C"), broker.queue("other")
    ch.exchange_declare(fan, "fanout")
    ch.queue_declare(c, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": fan})
    ch.queue_declare(other)
    ch.queue_bind(c, fan)
    ch.queue_bind(other, fan)
    ch.basic_publish("", c, b"fan-out")
    assert wait_count(broker, other, 1) == 1
    hold(0.1, "the copy for C must NOT arrive")
    assert count(broker, c) == 0
    method, properties, _body = fetch(ch, other)
    assert (method.exchange, method.routing_key) == (fan, c)
    assert properties.headers["x-death"][0]["reason"] == "expired"


def test_dead_letter_routing_key_replaces_the_keys_and_removes_cc(broker: Run) -> None:
    ch = broker.confirmed()
    dlx, src = broker.exchange("dlx"), broker.queue("src")
    ch.exchange_declare(dlx, "direct")
    targets = {key: broker.queue(f"to-{key}") for key in ("over", "rk", "cc", "bcc")}
    for key, q in targets.items():
        ch.queue_declare(q)
        ch.queue_bind(q, dlx, key)
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "over"})
    ch.queue_bind(src, "amq.direct", "rk")
    ch.basic_publish("amq.direct", "rk", b"m", props(headers={"CC": ["cc"], "BCC": ["bcc"], "h": 1}))
    method, _props, _body = ch.basic_get(src)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert wait_count(broker, targets["over"], 1) == 1
    method, properties, _body = fetch(ch, targets["over"])
    assert (method.exchange, method.routing_key) == (dlx, "over")
    assert without_times(properties.headers) == {
        "h": 1,
        "x-death": [{"count": 1, "reason": "rejected", "queue": src, "time": TIME, "exchange": "amq.direct",
                     "routing-keys": ["rk", "cc"]}],
        "x-first-death-exchange": "amq.direct", "x-first-death-queue": src, "x-first-death-reason": "rejected",
    }
    hold(0.05, "no copy must arrive under the original keys")
    assert [count(broker, targets[key]) for key in ("rk", "cc", "bcc")] == [0, 0, 0]


def test_dead_letter_without_routing_key_reuses_the_original_keys_including_bcc(broker: Run) -> None:
    ch = broker.confirmed()
    dlx, src, both = broker.exchange("dlx"), broker.queue("src"), broker.queue("both")
    ch.exchange_declare(dlx, "direct")
    targets = {key: broker.queue(f"to-{key}") for key in ("rk", "cc", "bcc")}
    ch.queue_declare(both)
    for key, q in targets.items():
        ch.queue_declare(q)
        ch.queue_bind(q, dlx, key)
        ch.queue_bind(both, dlx, key)
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(src, "amq.direct", "rk")
    ch.basic_publish("amq.direct", "rk", b"m", props(headers={"CC": ["cc"], "BCC": ["bcc"]}))
    method, _props, _body = ch.basic_get(src)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert wait_count(broker, both, 1) == 1
    for q in (*targets.values(), both):
        method, properties, _body = fetch(ch, q)
        assert (method.exchange, method.routing_key) == (dlx, "rk")
        assert properties.headers["CC"] == ["cc"]
        assert "BCC" not in properties.headers
        assert properties.headers["x-death"][0]["routing-keys"] == ["rk", "cc"]  # BCC is not recorded
        assert count(broker, q) == 0  # one copy each


def test_missing_dead_letter_exchange_drops_the_message(broker: Run) -> None:
    ch = broker.confirmed()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": broker.exchange("nosuch")})
    publish(ch, q, b"lost")
    method, _props, _body = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.queue_declare(q, passive=True)  # a round trip on the rejecting channel: the reject has been handled
    assert count(broker, q) == 0
    assert ch.is_open
    publish(ch, q, b"next")
    assert bodies(ch, q) == [b"next"]


# --- length limits ----------------------------------------------------------------------------------------


def test_drop_head_dead_letters_the_oldest_with_reason_maxlen(broker: Run) -> None:
    ch = broker.confirmed()
    src, dl = dead_letter_pair(broker, ch, **{"x-max-length": 2})
    for i in range(1, 6):
        ch.basic_publish("", src, b"%d" % i, props(expiration="60000"))
    assert count(broker, src) == 2
    assert wait_count(broker, dl, 3) == 3
    assert bodies(ch, src) == [b"4", b"5"]
    for expected in (b"1", b"2", b"3"):
        _method, properties, body = fetch(ch, dl)
        assert body == expected
        assert without_times(properties.headers)["x-death"] == [
            {"count": 1, "reason": "maxlen", "queue": src, "time": TIME, "exchange": "", "routing-keys": [src],
             "original-expiration": "60000"}]
        assert properties.expiration is None


def test_max_length_bytes_counts_body_bytes(broker: Run) -> None:
    ch = broker.confirmed()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    seen = []
    for body in (b"aaaa", b"bbbb", b"cccc", b"", b"dddddddddd"):
        publish(ch, q, body)
        seen.append(count(broker, q))
    assert seen == [1, 2, 2, 3, 2]
    assert bodies(ch, q) == [b"", b"dddddddddd"]
    publish(ch, q, b"x", b"e" * 11)  # larger than the limit: nothing stays, not even itself
    assert count(broker, q) == 0


@pytest.mark.parametrize("mode", ["reject-publish", "reject-publish-dlx"])
def test_reject_publish_nacks_refused_messages(broker: Run, mode: str) -> None:
    conn = broker.connect()
    ch = broker.confirmed(conn)
    src, dl = dead_letter_pair(broker, ch, **{"x-max-length": 2, "x-overflow": mode})
    confirms = Confirms(conn)
    for i in range(1, 6):
        confirms.publish(src, b"%d" % i)
    assert confirms.outcomes() == ((1, "ack"), (2, "ack"), (3, "nack"), (4, "nack"), (5, "nack"))
    assert confirms.in_order(), confirms.frames
    assert bodies(ch, src) == [b"1", b"2"]
    if mode == "reject-publish":
        hold(0.05, "a refused message must NOT be dead-lettered")
        assert count(broker, dl) == 0
        return
    assert wait_count(broker, dl, 3) == 3  # reject-publish-dlx: refused *and* dead-lettered, reason maxlen
    for expected in (b"3", b"4", b"5"):
        method, properties, body = fetch(ch, dl)
        assert (body, method.routing_key) == (expected, dl)
        assert without_times(properties.headers) == {
            "x-death": [{"count": 1, "reason": "maxlen", "queue": src, "time": TIME, "exchange": "",
                         "routing-keys": [src]}],
            "x-first-death-exchange": "", "x-first-death-queue": src, "x-first-death-reason": "maxlen",
        }


def test_zero_max_length_with_a_ready_consumer(broker: Run) -> None:
    """drop-head delivers straight to a consumer that can take the message; reject-publish refuses it."""
    conn = broker.connect()
    received: list[bytes] = []
    outcomes = {}
    for mode in ("drop-head", "reject-publish"):
        q = broker.queue(mode)
        conn.channel().queue_declare(q, arguments={"x-max-length": 0, "x-overflow": mode})
        conn.channel().basic_consume(q, lambda _c, _m, _p, body: received.append(body), auto_ack=True)
        confirms = Confirms(conn)
        confirms.publish(q, mode.encode())
        outcomes[mode] = confirms.outcomes()
    drain(conn, received, 1)
    assert outcomes == {"drop-head": ((1, "ack"),), "reject-publish": ((1, "nack"),)}
    assert received == [b"drop-head"]


# --- priorities -------------------------------------------------------------------------------------------


def test_priority_queue_delivers_highest_priority_first(broker: Run) -> None:
    conn = broker.connect()
    ch = broker.confirmed(conn)
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    for body, priority in ((b"n1", None), (b"p1", 1), (b"p5a", 5), (b"p9", 9), (b"p0", 0), (b"p5b", 5),
                           (b"p3", 3), (b"n2", None), (b"p200", 200), (b"p1b", 1)):
        ch.basic_publish("", q, body, props(priority=priority))
    received: list[tuple[bytes, int | None]] = []
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=20)
    consumer.basic_consume(q, lambda _c, _m, p, body: received.append((body, p.priority)), auto_ack=True)
    drain(conn, received, 10)
    # above the maximum counts as the maximum (the property is left as sent); none counts as 0; FIFO within
    assert received == [(b"p5a", 5), (b"p9", 9), (b"p5b", 5), (b"p200", 200), (b"p3", 3), (b"p1", 1),
                        (b"p1b", 1), (b"n1", None), (b"p0", 0), (b"n2", None)]


def test_priority_queue_requeue_keeps_priority_order(broker: Run) -> None:
    ch = broker.confirmed()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 3})
    for body, priority in ((b"a", 1), (b"b", 2), (b"c", None), (b"d", 3), (b"e", 2)):
        ch.basic_publish("", q, body, props(priority=priority))
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]  # d, b, e
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    got = []
    for _ in range(5):
        method, _props, body = fetch(ch, q)
        got.append((body, method.redelivered))
    assert got == [(b"d", True), (b"b", True), (b"e", True), (b"a", False), (b"c", False)]


def test_max_priority_zero_is_fifo(broker: Run) -> None:
    ch = broker.confirmed()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 0})
    for body, priority in ((b"x", 1), (b"y", 5), (b"z", None)):
        ch.basic_publish("", q, body, props(priority=priority))
    assert bodies(ch, q) == [b"x", b"y", b"z"]


def test_consumer_priority_gets_messages_while_it_has_credit(broker: Run) -> None:
    conn = broker.connect()
    ch = broker.confirmed(conn)
    q = broker.queue()
    ch.queue_declare(q)
    received: list[tuple[str, bytes]] = []
    high, low = conn.channel(), conn.channel()
    high.basic_qos(prefetch_count=2)
    high.basic_consume(q, lambda _c, m, _p, body: received.append((m.consumer_tag, body)), consumer_tag="high",
                       arguments={"x-priority": 10})
    low.basic_consume(q, lambda _c, m, _p, body: received.append((m.consumer_tag, body)), consumer_tag="low",
                      auto_ack=True)
    publish(ch, q, b"1", b"2", b"3", b"4", b"5")
    drain(conn, received, 5)
    assert received == [("high", b"1"), ("high", b"2"), ("low", b"3"), ("low", b"4"), ("low", b"5")]
    high.basic_ack(0, multiple=True)
    high.queue_declare(q, passive=True)  # a round trip to the queue on high's channel: the ack is there before 6-8
    publish(ch, q, b"6", b"7", b"8")
    drain(conn, received, 8)
    assert received[5:] == [("high", b"6"), ("high", b"7"), ("low", b"8")]


# --- single active consumer -------------------------------------------------------------------------------


def test_single_active_consumer_only_the_first_receives_then_the_next_takes_over(broker: Run) -> None:
    conn = broker.connect()
    ch = broker.confirmed(conn)
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    received: list[Any] = []
    channels = sac_consumers(conn, q, received, {"A": None, "B": None, "C": None})
    assert broker.counts(q) == ("count", 0, 3)
    publish(ch, q, *(b"%d" % i for i in range(1, 9)))
    drain(conn, received, 2, settle=0.2)
    assert received == [("A", b"1", False), ("A", b"2", False)]
    channels["A"].basic_ack(0, multiple=True)
    drain(conn, received, 4, settle=0.2)
    assert received[2:] == [("A", b"3", False), ("A", b"4", False)]
    channels["A"].close()
    drain(conn, received, 6, settle=0.2)
    assert received[4:] == [("B", b"3", True), ("B", b"4", True)]
    channels["B"].basic_ack(0, multiple=True)
    drain(conn, received, 8, settle=0.2)
    assert received[6:] == [("B", b"5", False), ("B", b"6", False)]
    assert broker.counts(q) == ("count", 2, 2)


def test_single_active_consumer_next_is_the_highest_priority_then_the_earliest(broker: Run) -> None:
    conn = broker.connect()
    ch = broker.confirmed(conn)
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    received: list[Any] = []
    channels = sac_consumers(conn, q, received, {"A": 0, "B": 1, "C": 5, "D": 5})
    publish(ch, q, *(b"%d" % i for i in range(1, 7)))
    drain(conn, received, 2, settle=0.2)
    assert [r[0] for r in received] == ["A", "A"]  # the first registered, whatever the priorities
    channels["A"].close()
    drain(conn, received, 4, settle=0.2)
    assert received[2:] == [("C", b"1", True), ("C", b"2", True)]


def test_single_active_consumer_cancel_hands_over_to_the_next(broker: Run) -> None:
    """RabbitMQ 3.10 does not run the queue on basic.cancel (a bug: the new active consumer waits for the next
    basic.consume or requeue, and a publish in between crashes the queue process), so another consumer is
    registered right after the cancel; a broker that hands over at once passes too."""
    conn = broker.connect()
    ch = broker.confirmed(conn)
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    received: list[Any] = []
    channels = sac_consumers(conn, q, received, {"A": None, "B": None, "C": None})
    publish(ch, q, *(b"%d" % i for i in range(1, 9)))
    drain(conn, received, 2, settle=0.2)
    channels["A"].basic_ack(0, multiple=True)
    drain(conn, received, 4, settle=0.2)
    channels["A"].basic_cancel("A")  # with 3 and 4 unacked
    sac_consumers(conn, q, received, {"late": None})
    drain(conn, received, 6, settle=0.2)
    assert received[4:] == [("B", b"5", False), ("B", b"6", False)]
    assert broker.counts(q) == ("count", 2, 3)
    channels["A"].close()  # 3 and 4 go back to the queue's head
    conn.process_data_events(time_limit=0.3)  # RabbitMQ requeues asynchronously: let it land before B has room
    channels["B"].basic_ack(0, multiple=True)
    drain(conn, received, 8, settle=0.2)
    assert received[6:] == [("B", b"3", True), ("B", b"4", True)]


def test_single_active_consumer_refuses_an_exclusive_consumer(broker: Run) -> None:
    ch = broker.channel()
    q = broker.queue()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        ch.basic_consume(q, lambda *a: None, exclusive=True)
    assert (excinfo.value.reply_code, excinfo.value.reply_text) == (
        403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")


# --- alternate exchange -----------------------------------------------------------------------------------


def test_alternate_exchange_takes_unroutable_messages(broker: Run) -> None:
    conn = broker.connect()
    ch = conn.channel()
    returned: list[Any] = []
    ch.add_on_return_callback(lambda _c, m, _p, body: returned.append((m.reply_code, m.exchange, body)))
    x, ae, q_ae, q_x = broker.exchange("x"), broker.exchange("ae"), broker.queue("ae"), broker.queue("x")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    ch.queue_declare(q_ae)
    ch.queue_declare(q_x)
    ch.queue_bind(q_ae, ae)
    ch.queue_bind(q_x, x, "known")
    ch.basic_publish(x, "known", b"routed", mandatory=True)
    ch.basic_publish(x, "unknown", b"to-ae", mandatory=True)
    drain(conn, returned, 1, timeout=0.3)
    assert returned == []
    method, _props, body = fetch(ch, q_ae)
    assert (body, method.exchange, method.routing_key) == (b"to-ae", x, "unknown")
    assert bodies(ch, q_ae) == []
    assert bodies(ch, q_x) == [b"routed"]


def test_mandatory_message_is_returned_when_the_alternate_exchange_cannot_route_it(broker: Run) -> None:
    conn = broker.connect()
    ch = conn.channel()
    returned: list[Any] = []
    ch.add_on_return_callback(lambda _c, m, _p, body: returned.append(
        (m.reply_code, m.reply_text, m.exchange, m.routing_key, body)))
    dead_end, y, z = broker.exchange("dead-end"), broker.exchange("y"), broker.exchange("z")
    c1, c2 = broker.exchange("c1"), broker.exchange("c2")
    ch.exchange_declare(dead_end, "direct")
    ch.exchange_declare(y, "direct", arguments={"alternate-exchange": dead_end})
    ch.exchange_declare(z, "direct", arguments={"alternate-exchange": broker.exchange("missing")})
    ch.exchange_declare(c1, "direct", arguments={"alternate-exchange": c2})
    ch.exchange_declare(c2, "direct", arguments={"alternate-exchange": c1})
    ch.basic_publish(y, "k", b"ae-cannot-route", mandatory=True)
    ch.basic_publish(z, "k", b"ae-missing", mandatory=True)
    ch.basic_publish(c1, "k", b"ae-cycle", mandatory=True)
    drain(conn, returned, 3)
    assert returned == [(312, "NO_ROUTE", y, "k", b"ae-cannot-route"), (312, "NO_ROUTE", z, "k", b"ae-missing"),
                        (312, "NO_ROUTE", c1, "k", b"ae-cycle")]


def test_alternate_exchange_chain(broker: Run) -> None:
    ch = broker.confirmed()
    first, middle, last = broker.exchange("first"), broker.exchange("middle"), broker.exchange("last")
    q = broker.queue()
    ch.exchange_declare(last, "fanout")
    ch.exchange_declare(middle, "direct", arguments={"alternate-exchange": last})
    ch.exchange_declare(first, "topic", arguments={"alternate-exchange": middle})
    ch.queue_declare(q)
    ch.queue_bind(q, last)
    ch.basic_publish(first, "a.b", b"chained")
    method, _props, body = fetch(ch, q)
    assert (body, method.exchange, method.routing_key) == (b"chained", first, "a.b")


def test_alternate_exchange_argument_must_be_a_string(broker: Run) -> None:
    ch = broker.channel()
    x = broker.exchange()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        ch.exchange_declare(x, "direct", arguments={"alternate-exchange": 5})
    assert (excinfo.value.reply_code, excinfo.value.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange '{x}' "
             "in vhost '/'")


# --- sender-selected distribution -------------------------------------------------------------------------


def test_cc_and_bcc_route_to_extra_keys_and_bcc_is_removed(broker: Run) -> None:
    ch = broker.confirmed()
    q1, q2, q3, both = broker.queue("1"), broker.queue("2"), broker.queue("3"), broker.queue("both")
    for q in (q1, q2, q3, both):
        ch.queue_declare(q)
    ch.queue_bind(both, "amq.direct", "k1")
    ch.queue_bind(both, "amq.direct", "k2")
    ch.basic_publish("", q1, b"m", props(headers={"CC": [q2], "BCC": [q3], "other": 1}))
    ch.basic_publish("amq.direct", "k1", b"one-copy", props(headers={"CC": ["k2", "k1"], "BCC": ["k2"]}))
    ch.basic_publish("", "nowhere", b"bcc-only", props(headers={"BCC": [q3]}))
    for q in (q1, q2, q3):
        method, properties, body = fetch(ch, q)
        assert (body, method.routing_key, properties.headers) == (b"m", q1, {"CC": [q2], "other": 1})
    method, properties, body = fetch(ch, both)
    assert (body, properties.headers) == (b"one-copy", {"CC": ["k2", "k1"]})
    assert bodies(ch, both) == []
    method, properties, body = fetch(ch, q3)
    assert (body, method.routing_key, properties.headers) == (b"bcc-only", "nowhere", {})  # an empty table
    assert bodies(ch, q1) == bodies(ch, q2) == bodies(ch, q3) == []


def test_mandatory_message_routed_only_by_cc_is_not_returned(broker: Run) -> None:
    conn = broker.connect()
    ch = conn.channel()
    q = broker.queue()
    ch.queue_declare(q)
    returned: list[bytes] = []
    ch.add_on_return_callback(lambda _c, _m, _p, body: returned.append(body))
    ch.basic_publish("", "nowhere", b"by-cc", props(headers={"CC": [q]}), mandatory=True)
    ch.basic_publish("", "nowhere", b"lost", props(headers={"CC": ["nowhere-either"]}), mandatory=True)
    drain(conn, returned, 1)
    assert returned == [b"lost"]
    assert bodies(ch, q) == [b"by-cc"]


@pytest.mark.parametrize(("headers", "text"), [
    ({"CC": "not-an-array"}, 'PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,"CC",longstr}'),
    ({"BCC": 5}, 'PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,"BCC",signedint}'),
], ids=["CC-string", "BCC-integer"])
def test_cc_or_bcc_that_is_not_an_array_closes_the_channel(broker: Run, headers: dict[str, Any],
                                                           text: str) -> None:
    ch = broker.channel()
    q = broker.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"bad", props(headers=headers))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        ch.queue_declare(q, passive=True)
    assert (excinfo.value.reply_code, excinfo.value.reply_text) == (406, text)


# --- invalid arguments ------------------------------------------------------------------------------------

def arg_error(arg: str, reason: str) -> str:
    return f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{{q}}' in vhost '/': {reason}"


INVALID_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"x-message-ttl": -1}, arg_error("x-message-ttl", "{value_negative,-1}")),
    ({"x-message-ttl": "abc"}, arg_error("x-message-ttl", '"expected integer, got longstr"')),
    ({"x-message-ttl": True}, arg_error("x-message-ttl", '"expected integer, got bool"')),
    ({"x-message-ttl": 2**40}, arg_error("x-message-ttl", "{value_too_large,1099511627776}")),
    ({"x-max-length": -1}, arg_error("x-max-length", "{value_negative,-1}")),
    ({"x-max-length": "5"}, arg_error("x-max-length", '"expected integer, got longstr"')),
    ({"x-max-length-bytes": -1}, arg_error("x-max-length-bytes", "{value_negative,-1}")),
    ({"x-overflow": "bogus"}, arg_error("x-overflow", "invalid_overflow")),
    ({"x-overflow": 1}, arg_error("x-overflow", "{unacceptable_type,signedint}")),
    ({"x-dead-letter-routing-key": "k"}, arg_error("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined")),
    ({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": 5},
     arg_error("x-dead-letter-routing-key", "{unacceptable_type,signedint}")),
    ({"x-dead-letter-exchange": 5},
     "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'"),
    ({"x-expires": 0}, arg_error("x-expires", "{value_zero,0}")),
    ({"x-expires": -1}, arg_error("x-expires", "{value_negative,-1}")),
    ({"x-expires": "a"}, arg_error("x-expires", '"expected integer, got longstr"')),
    ({"x-max-priority": 256}, arg_error("x-max-priority", "{max_value_exceeded,256}")),
    ({"x-max-priority": -1}, arg_error("x-max-priority", "{value_negative,-1}")),
    ({"x-max-priority": "a"}, arg_error("x-max-priority", '"expected integer, got longstr"')),
    ({"x-single-active-consumer": "yes"}, arg_error("x-single-active-consumer", "{unacceptable_type,longstr}")),
    ({"x-message-ttl": -1, "x-max-length": -1}, arg_error("x-message-ttl", "{value_negative,-1}")),  # the first
]


@pytest.mark.parametrize(("arguments", "text"), INVALID_ARGUMENTS, ids=[repr(a) for a, _ in INVALID_ARGUMENTS])
def test_invalid_queue_argument_is_406(broker: Run, arguments: dict[str, Any], text: str) -> None:
    ch = broker.channel()
    q = broker.queue()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        ch.queue_declare(q, arguments=arguments)
    assert (excinfo.value.reply_code, excinfo.value.reply_text) == (406, text.replace("{q}", q))
    assert count(broker, q) is None


@pytest.mark.parametrize("arguments", [
    {"x-message-ttl": 0}, {"x-message-ttl": 2**32}, {"x-max-length": 0}, {"x-max-length-bytes": 0},
    {"x-overflow": "drop-head"}, {"x-overflow": "reject-publish"}, {"x-overflow": "reject-publish-dlx"},
    {"x-dead-letter-exchange": "does-not-exist"}, {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "k"},
    {"x-expires": 1000}, {"x-max-priority": 0}, {"x-max-priority": 255}, {"x-single-active-consumer": False},
], ids=repr)
def test_valid_lifecycle_arguments_are_accepted(broker: Run, arguments: dict[str, Any]) -> None:
    ch = broker.channel()
    q = broker.queue()
    assert ch.queue_declare(q, arguments=arguments).method.queue == q
    assert ch.queue_declare(q, arguments=arguments).method.message_count == 0
