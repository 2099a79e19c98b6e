"""Job-done notices (core/notices.py): a message with an x-leveret-notify header makes the broker publish what
becomes of it (routed, delivered, processed, failed) to the queue it names. At the core: no sockets, a manual
clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from leveret.core.errors import PermissionRefused

from corekit import Core

NOTIFY = {"x-leveret-notify": "notices"}


def setup(**arguments: Any) -> tuple[Core, Any]:
    core = Core()
    client = core.client()
    client.declare("notices", durable=True)
    client.declare("work", **arguments)
    return core, client


def notices(client: Any) -> list[tuple[Any, ...]]:
    out = []
    while (got := client.get("notices")) is not None:
        msg = got[1]
        notice = json.loads(msg.body)
        assert msg.properties["content_type"] == "application/json" and "headers" not in msg.properties
        out.append((notice["id"], notice["event"], notice["queue"], notice["reason"], *(
            [notice["queues"]] if "queues" in notice else [])))
    return out


def publish(client: Any, message_id: str = "m1", routing_key: str = "work", **properties: Any) -> None:
    headers = {**NOTIFY, **properties.pop("headers", {})}
    client.publish(routing_key, b"job", message_id=message_id, headers=headers, delivery_mode=2, **properties)


def test_a_consumed_message_is_routed_delivered_then_processed_when_acked() -> None:
    _, client = setup()
    publish(client)
    client.consume("work", "c1", prefetch=1)
    assert notices(client) == [("m1", "routed", "", None, ["work"]), ("m1", "delivered", "work", None)]
    client.ack(client.sink.deliveries[0].delivery_tag)
    assert notices(client) == [("m1", "processed", "work", None)]
    assert client.sink.deliveries[0].headers == NOTIFY  # the consumer sees the header as sent


def test_a_rejected_message_fails_with_its_reason_and_a_requeued_one_does_not() -> None:
    _, client = setup(**{"x-dead-letter-exchange": ""})
    publish(client)
    publish(client, "m2")
    client.consume("work", "c1", prefetch=2)
    first, second = client.sink.deliveries
    client.reject(first.delivery_tag, requeue=True)  # delivered again: not a failure
    client.reject(second.delivery_tag, requeue=False)
    events = [n for n in notices(client) if n[1] not in ("routed", "delivered")]
    assert events == [("m2", "failed", "work", "rejected, dead-lettered")]


def test_expiry_and_a_no_ack_get() -> None:
    core, client = setup(**{"x-message-ttl": 100})
    publish(client)
    core.advance(0.2)
    client.count("work")
    publish(client, "m2")
    assert client.get("work", no_ack=True) is not None
    assert notices(client) == [("m1", "routed", "", None, ["work"]), ("m1", "failed", "work", "expired"),
                               ("m2", "routed", "", None, ["work"]), ("m2", "delivered", "work", None),
                               ("m2", "processed", "work", None)]


def test_a_multicast_message_names_every_queue_it_was_routed_to() -> None:
    _, client = setup()
    client.exchange("fan", "fanout")
    for queue in ("a", "b"):
        client.declare(queue)
        client.bind(queue, "fan")
    publish(client, routing_key="", exchange="fan")
    assert client.get("a", no_ack=False) is not None
    assert client.get("b", no_ack=True) is not None  # b's copy reports too
    assert notices(client) == [("m1", "routed", "", None, ["a", "b"]), ("m1", "delivered", "a", None),
                               ("m1", "delivered", "b", None), ("m1", "processed", "b", None)]


def test_a_retried_rejection_is_not_a_failure_until_the_retries_are_used_up() -> None:
    core, client = setup(**{"x-retry-intervals": [1000]})
    publish(client)
    client.consume("work", "c1", prefetch=1)
    client.reject(client.sink.deliveries[0].delivery_tag, requeue=False)
    assert [n[1] for n in notices(client)] == ["routed", "delivered"]
    core.advance(1.1)
    client.reject(client.sink.deliveries[1].delivery_tag, requeue=False)
    assert [n[1:4] for n in notices(client)] == [("delivered", "work", None),
                                                 ("failed", "work", "retries_exhausted")]


def test_messages_without_the_header_or_naming_no_queue_cost_no_notice() -> None:
    _, client = setup()
    client.publish("work", b"plain", message_id="p")
    client.publish("work", b"nowhere", message_id="n", headers={"x-leveret-notify": "no-such-queue"})
    client.publish("work", b"empty", message_id="e", headers={"x-leveret-notify": ""})
    client.publish("work", b"no id", headers={"x-leveret-notify": "notices"})  # a notice needs the message_id
    client.publish("work", b"itself", message_id="i", headers={"x-leveret-notify": "work"})  # not to its own queue
    assert client.bodies("work") == [b"plain", b"nowhere", b"empty", b"no id", b"itself"]
    assert notices(client) == []


def test_naming_a_notice_queue_takes_write_permission_on_the_default_exchange() -> None:
    """The notices go through the default exchange: a publisher who may not write there may not ask for them."""
    core, admin = setup()
    admin.exchange("x", "fanout")
    admin.bind("work", "x")
    core.broker.add_user("app", "secret", vhosts={"/"})
    core.broker.set_permission("app", "/", write="^x$")
    app = core.client("app", "secret")
    app.publish("", b"plain", exchange="x", message_id="p")
    with pytest.raises(PermissionRefused, match=r"amq\.default"):
        app.publish("", b"tracked", exchange="x", message_id="t", headers=NOTIFY)
    assert admin.bodies("work") == [b"plain"] and notices(admin) == []
