"""The message lifecycle in the core alone (no server, no socket, a manual clock: ``corekit``): TTLs and queue
leases expire at their deadline to the millisecond, dead-lettering writes x-death, length limits drop the oldest,
Leveret's retry schedules (``x-retry-intervals``) and ``x-delivery-limit`` on classic queues, and the delayed
exchange releases at the due time. RabbitMQ's behaviour for the same rules is checked end to end by
``test_lifecycle.py`` and the differential lifecycle scenarios; here the timing is exact, because time moves only
when the test says so."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corekit import Client, Core


@pytest.fixture
def core() -> Iterator[Core]:
    core = Core()
    try:
        yield core
    finally:
        core.close()


@pytest.fixture
def client(core: Core) -> Client:
    return core.client()


def dead_letter_pair(client: Client, **source_arguments: object) -> None:
    """Queue "dl", and queue "src" dead-lettering into it through the default exchange."""
    client.declare("dl")
    client.declare("src", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dl", **source_arguments})


# --- TTL -------------------------------------------------------------------------------------------------------


def test_queue_ttl_expires_messages_at_their_deadline(core: Core, client: Client) -> None:
    client.declare("q", **{"x-message-ttl": 100})
    client.publish("q", b"1")
    core.advance(0.05)
    client.publish("q", b"2")
    core.advance(0.049)
    assert client.count("q") == 2
    core.advance(0.002)  # 101 ms after the first
    assert client.count("q") == 1
    core.advance(0.05)
    assert client.count("q") == 0


def test_per_message_ttl_expires_only_at_the_head(core: Core, client: Client) -> None:
    client.declare("q")
    client.publish("q", b"long", expiration="10000")
    client.publish("q", b"short", expiration="50")
    client.publish("q", b"none")
    core.advance(0.2)
    assert client.count("q") == 3  # "short" has expired but is behind "long"
    assert client.get_body("q") == b"long"
    assert client.bodies("q") == [b"none"]  # "short" was dropped as it reached the head


def test_effective_ttl_is_the_lower_of_queue_and_message_ttl(core: Core, client: Client) -> None:
    client.declare("lower", **{"x-message-ttl": 100})
    client.publish("lower", b"a", expiration="60000")
    client.declare("higher", **{"x-message-ttl": 60000})
    client.publish("higher", b"b", expiration="50")
    core.advance(0.049)
    assert (client.count("lower"), client.count("higher")) == (1, 1)
    core.advance(0.002)
    assert (client.count("lower"), client.count("higher")) == (1, 0)  # 50 ms, the message's TTL
    core.advance(0.05)
    assert client.count("lower") == 0  # 100 ms, the queue's TTL


def test_message_that_expired_while_unacked_is_dropped_when_requeued(core: Core, client: Client) -> None:
    client.declare("q", **{"x-message-ttl": 100})
    client.publish("q", b"held")
    got = client.get("q", no_ack=False)
    assert got is not None
    core.advance(0.2)
    client.reject(got[0], requeue=True)
    assert client.count("q") == 0


def test_expired_message_is_dead_lettered_with_its_original_expiration(core: Core, client: Client) -> None:
    dead_letter_pair(client)
    client.publish("src", b"late", expiration="100")
    core.advance(0.099)
    assert client.count("dl") == 0
    core.advance(0.002)
    got = client.get("dl")
    assert got is not None
    headers = got[1].headers or {}
    assert got[1].body == b"late" and "expiration" not in got[1].properties
    death = headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"], death["original-expiration"]) == (
        "expired", "src", 1, "100")
    assert headers["x-first-death-reason"] == "expired"


# --- queue leases (x-expires) --------------------------------------------------------------------------------


def test_unused_queue_expires_at_the_end_of_its_lease_even_with_messages(core: Core, client: Client) -> None:
    client.declare("q", **{"x-expires": 200})
    client.publish("q", b"kept?")
    core.advance(0.199)
    assert client.count("q") == 1
    core.advance(0.002)
    assert client.count("q") is None


def test_a_consumer_keeps_an_expiring_queue_alive_until_it_cancels(core: Core, client: Client) -> None:
    client.declare("q", **{"x-expires": 200})
    client.consume("q", "keeper")
    core.advance(1.0)
    assert client.count("q") == 0
    client.cancel("keeper")
    core.advance(0.199)
    assert client.count("q") == 0
    core.advance(0.002)
    assert client.count("q") is None


def test_basic_get_renews_the_lease(core: Core, client: Client) -> None:
    client.declare("q", **{"x-expires": 200})
    for _ in range(5):
        core.advance(0.15)
        assert client.get("q") is None  # an empty get still uses the queue
    assert client.count("q") == 0
    core.advance(0.201)
    assert client.count("q") is None


# --- dead-lettering and length limits -------------------------------------------------------------------------


def test_rejected_message_is_dead_lettered_with_x_death(client: Client) -> None:
    dead_letter_pair(client)
    client.publish("src", b"bad", headers={"app": "a"})
    got = client.get("src", no_ack=False)
    assert got is not None
    client.reject(got[0], requeue=False)
    dead = client.get("dl")
    assert dead is not None and dead[1].body == b"bad"
    headers = dead[1].headers or {}
    assert headers["app"] == "a"
    death = headers["x-death"][0]
    assert (death["reason"], death["queue"], death["exchange"], death["routing-keys"]) == (
        "rejected", "src", "", ["src"])


def test_drop_head_dead_letters_the_oldest_with_reason_maxlen(client: Client) -> None:
    dead_letter_pair(client, **{"x-max-length": 2})
    for body in (b"1", b"2", b"3", b"4"):
        client.publish("src", body)
    assert client.bodies("src") == [b"3", b"4"]
    dead = [client.get("dl"), client.get("dl")]
    assert [d[1].body for d in dead if d is not None] == [b"1", b"2"]
    assert {(d[1].headers or {})["x-death"][0]["reason"] for d in dead if d is not None} == {"maxlen"}


def test_reject_publish_refuses_with_a_nack(client: Client) -> None:
    client.declare("q", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    client.channel.select_confirm()
    client.publish("q", b"in")
    client.publish("q", b"refused")
    assert [(tag, ack) for _ch, tag, _multiple, ack in client.sink.confirms] == [(1, True), (2, False)]
    assert client.bodies("q") == [b"in"]


# --- Leveret's retry schedules and delivery limit on classic queues (docs/extensions.md) ---------------------


def test_retry_intervals_redeliver_on_schedule_then_dead_letter(core: Core, client: Client) -> None:
    client.exchange("failed", "fanout")
    client.declare("failed-jobs")
    client.bind("failed-jobs", "failed")
    client.declare("jobs", **{"x-retry-intervals": [100, 200, 300], "x-dead-letter-exchange": "failed"})
    client.publish("jobs", b"send email", headers={"task": "email"})
    seen = []
    for interval in (0.1, 0.2, 0.3):
        got = client.get("jobs", no_ack=False)
        assert got is not None
        seen.append((got[1].headers or {}).get("x-retry-count"))
        client.reject(got[0], requeue=False)
        core.advance(interval - 0.001)
        assert client.count("jobs") == 0, f"back before its {interval} s interval"
        core.advance(0.002)
        assert client.count("jobs") == 1, f"not back after its {interval} s interval"
    got = client.get("jobs", no_ack=False)
    assert got is not None
    seen.append((got[1].headers or {}).get("x-retry-count"))
    client.reject(got[0], requeue=False)
    assert seen == [None, 1, 2, 3]
    dead = client.get("failed-jobs")
    assert dead is not None and dead[1].body == b"send email"
    headers = dead[1].headers or {}
    assert headers["x-retry-count"] == 3 and headers["task"] == "email"
    assert headers["x-death"][0]["reason"] == "retries_exhausted"
    assert headers["x-first-death-reason"] == "retries_exhausted"


def test_requeue_true_is_not_a_retry(core: Core, client: Client) -> None:
    client.declare("jobs", **{"x-retry-intervals": [5000]})
    client.publish("jobs", b"x")
    got = client.get("jobs", no_ack=False)
    assert got is not None
    client.reject(got[0], requeue=True)
    again = client.get("jobs", no_ack=False)  # at once: no retry interval
    assert again is not None and again[1].redelivered and again[1].headers is None


def test_delivery_limit_dead_letters_after_too_many_redeliveries(client: Client) -> None:
    client.exchange("poison", "fanout")
    client.declare("poison-q")
    client.bind("poison-q", "poison")
    client.declare("limited", **{"x-delivery-limit": 2, "x-dead-letter-exchange": "poison"})
    client.publish("limited", b"bad input")
    for _ in range(3):
        got = client.get("limited", no_ack=False)
        assert got is not None
        client.reject(got[0], requeue=True)
    assert client.get("limited") is None
    dead = client.get("poison-q")
    assert dead is not None and dead[1].body == b"bad input"
    assert (dead[1].headers or {})["x-death"][0]["reason"] == "delivery_limit"


def test_quorum_default_delivery_limit_is_rabbitmq_4s(client: Client) -> None:
    """RabbitMQ 4.0 gives quorum queues x-delivery-limit 20 when none is set (3.x had no limit); -1: no limit.
    (The quorum queue's RabbitMQ 3.10 behaviour is compared in differential/test_queue_types.py.)"""
    quorum = {"x-queue-type": "quorum"}
    client.declare("dead", durable=True)
    client.declare("q", durable=True, **quorum, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
    client.declare("unlimited", durable=True, **quorum, **{"x-delivery-limit": -1})
    for queue in ("q", "unlimited"):
        client.publish(queue, b"m")
        for _ in range(21):
            got = client.get(queue, no_ack=False)
            assert got is not None
            client.reject(got[0], requeue=True)
    assert client.count("q") == 0
    dead = client.get("dead")
    assert dead is not None and (dead[1].headers or {})["x-death"][0]["reason"] == "delivery_limit"
    again = client.get("unlimited")
    assert again is not None and (again[1].headers or {})["x-delivery-count"] == 21


# --- consumers -------------------------------------------------------------------------------------------------


def test_a_consumer_gets_a_delayed_message_at_its_due_time(core: Core, client: Client) -> None:
    client.exchange("later", "x-delayed-message", **{"x-delayed-type": "direct"})
    client.declare("q")
    client.bind("q", "later", "k")
    client.consume("q", "c", no_ack=True)
    client.publish("k", b"in 500 ms", exchange="later", headers={"x-delay": 500})
    core.advance(0.499)
    assert client.sink.bodies() == []
    core.advance(0.002)
    assert client.sink.bodies() == [b"in 500 ms"]
    delivery = client.sink.deliveries[0]
    assert (delivery.consumer_tag, delivery.exchange, delivery.routing_key) == ("c", "later", "k")


def test_closing_a_client_requeues_its_unacked_messages(core: Core, client: Client) -> None:
    client.declare("q")
    client.publish("q", b"1")
    client.consume("q", "c", prefetch=1)
    assert client.sink.bodies() == [b"1"] and client.count("q") == 0
    client.close()
    other = core.client()
    got = other.get("q")
    assert got is not None and got[1].body == b"1" and got[1].redelivered


def test_prefetch_holds_back_deliveries_until_an_ack(client: Client) -> None:
    client.declare("q")
    for body in (b"1", b"2", b"3"):
        client.publish("q", body)
    client.consume("q", "c", prefetch=2)
    assert client.sink.bodies() == [b"1", b"2"]
    client.ack(client.sink.deliveries[0].delivery_tag)
    assert client.sink.bodies() == [b"1", b"2", b"3"]


# --- vhosts -----------------------------------------------------------------------------------------------------


def test_vhosts_are_separate_namespaces(core: Core, client: Client) -> None:
    core.broker.add_vhost("other")
    core.broker.set_permission("guest", "other")
    elsewhere = core.client(vhost="other")
    client.declare("q")
    elsewhere.declare("q")
    client.publish("q", b"in /")
    assert (client.count("q"), elsewhere.count("q")) == (1, 0)
    core.broker.delete_vhost("other")
    assert elsewhere.sink.closed is not None  # its connections are closed, with the reason
    assert client.bodies("q") == [b"in /"]
