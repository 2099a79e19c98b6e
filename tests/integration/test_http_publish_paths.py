"""The management API's publish and get go through the core's one publish entry and one delivery step: they are
traced by the firehose, check ``expiration`` and CC as AMQP's basic.publish does, and keep the queue's unacked
count (checked against a real Leveret over HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from leveret.core.tracing import set_tracing
from leveret.node import ThreadedServer

from httphelp import RABBITMQ_HTTP_PORT, Client, rabbitmq_management


def publish(api: Client, key: str, **properties: Any) -> tuple[int, Any, dict[str, str]]:
    return api.request("POST", "/api/exchanges/%2F/amq.default/publish",
                       {"properties": properties, "routing_key": key, "payload": "p", "payload_encoding": "string"})


def test_management_publish_and_get_are_traced(http_server: ThreadedServer) -> None:
    api = Client(http_server.http_port)
    http_server.call(lambda: set_tracing(http_server.broker.vhosts["/"], True))
    api.ok("PUT", "/api/queues/%2F/work", {})
    api.ok("PUT", "/api/queues/%2F/firehose", {})
    api.ok("POST", "/api/bindings/%2F/e/amq.rabbitmq.trace/q/firehose", {"routing_key": "#"})
    assert publish(api, "work")[1] == {"routed": True}
    got = api.ok("POST", "/api/queues/%2F/work/get", {"count": 1, "ackmode": "ack_requeue_false",
                                                      "encoding": "auto"})
    assert [m["payload"] for m in got] == ["p"]
    traced = api.ok("POST", "/api/queues/%2F/firehose/get", {"count": 10, "ackmode": "ack_requeue_false",
                                                             "encoding": "auto"})
    assert [m["routing_key"] for m in traced] == ["publish.", "deliver.work"]
    headers = traced[0]["properties"]["headers"]
    assert headers["routed_queues"] == ["work"] and headers["channel"] == 0 and headers["user"] == "guest"
    assert headers["connection"].startswith("http guest@")


def test_management_publish_checks_expiration_and_cc_as_amqp(http_server: ThreadedServer) -> None:
    api = Client(http_server.http_port)
    api.ok("PUT", "/api/queues/%2F/checked", {})
    status, body, _ = publish(api, "checked", expiration="-5")
    assert status == 400 and body["reason"] == "406 PRECONDITION_FAILED - invalid expiration '-5': {value_negative,-5}"
    status, body, _ = publish(api, "checked", headers={"CC": "other"})
    assert status == 400 and "unacceptable_type_in_header" in body["reason"]
    assert publish(api, "checked", expiration="60000")[0] == 200
    assert api.get("/api/queues/%2F/checked")["messages"] == 1


def test_management_get_keeps_unacked_count(http_server: ThreadedServer) -> None:
    api = Client(http_server.http_port)
    api.ok("PUT", "/api/queues/%2F/counted", {})
    for _ in range(3):
        publish(api, "counted")
    for ackmode in ("reject_requeue_true", "ack_requeue_true", "reject_requeue_false"):
        api.ok("POST", "/api/queues/%2F/counted/get", {"count": 1, "ackmode": ackmode, "encoding": "auto"})
    queue = http_server.broker.vhosts["/"].queues["counted"]
    assert http_server.call(lambda: (queue.message_count, queue.unacked_count)) == (2, 0)


def _rabbitmq_api() -> Client | None:
    return Client(RABBITMQ_HTTP_PORT) if rabbitmq_management() else None


@pytest.mark.rabbitmq  # also on the reference RabbitMQ when its management API is there
def test_management_publish_refused_by_a_full_queue_is_a_bad_request_as_rabbitmq(http_server: ThreadedServer) -> None:
    """A publish a reject-publish queue refuses (AMQP would nack it) is RabbitMQ's 400 "rejected ...", not
    ``routed: true``: a client such as the outbox's HTTP transport must know it was not stored."""
    apis = [Client(http_server.http_port)]
    rabbit = _rabbitmq_api()
    if rabbit is not None:
        apis.append(rabbit)
    answers = []
    for api in apis:
        api.ok("PUT", "/api/queues/%2F/reject-full", {"arguments": {"x-max-length": 1, "x-overflow": "reject-publish"}})
        try:
            answers.append([publish(api, "reject-full")[:2] for _ in range(2)])
        finally:
            api.request("DELETE", "/api/queues/%2F/reject-full")
    for answer in answers:
        assert answer == [(200, {"routed": True}),
                          (400, {"error": "bad_request",
                                 "reason": "rejected Unable to publish message. Check queue limits."})]


@pytest.mark.rabbitmq  # also on the reference RabbitMQ when its management API is there
def test_connections_show_their_traffic_as_rabbitmq(http_server: ThreadedServer) -> None:
    """recv_oct/send_oct/recv_cnt/send_cnt and their ``_details`` rates on each connection, on Leveret and (when
    its management API is there) on RabbitMQ, whose statistics come every 5 s."""
    import pika

    from waiting import poll

    brokers = [(http_server.port, Client(http_server.http_port))]
    rabbit = _rabbitmq_api()
    if rabbit is not None:
        brokers.append((5672, rabbit))
    for port, api in brokers:
        name = f"traffic-{port}"
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, client_properties={
            "connection_name": name}))
        try:
            ch = conn.channel()
            ch.queue_declare("traffic", auto_delete=True)
            for _ in range(20):
                ch.basic_publish("", "traffic", b"x" * 1000)
            conn.process_data_events(0)

            def mine(api: Client = api, name: str = name) -> dict[str, Any] | None:
                found = [c for c in api.get("/api/connections")
                         if (c.get("client_properties") or {}).get("connection_name") == name]
                return found[0] if found and "recv_oct" in found[0] else None

            info = poll(mine, lambda c: c is not None and c["recv_oct"] > 20_000, timeout=20.0)
            assert info is not None
            assert info["recv_oct"] > 20_000 and info["send_oct"] > 0, info
            assert info["recv_cnt"] > 0 and info["send_cnt"] > 0
            assert isinstance(info["recv_oct_details"]["rate"], int | float)
            assert isinstance(info["send_oct_details"]["rate"], int | float)
        finally:
            conn.close()
