"""The management API's queue action ``retry_now`` (a Leveret extension, docs/management.md "Retrying a waiting
task now"): a message rejected into a queue's x-retry-intervals wait is released at once, by its message id,
with pika on the AMQP side and the API over HTTP, against a real Leveret."""

from __future__ import annotations

import time

import pika

from leveret.node import ThreadedServer

from httphelp import Client

ACTIONS = "/api/queues/%2F/jobs/actions"


def test_retry_now_releases_a_waiting_retry_once_with_the_rights_of_a_move(http_server: ThreadedServer) -> None:
    api = Client(http_server.http_port)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", http_server.port, connection_attempts=1))
    try:
        ch = conn.channel()
        ch.queue_declare("jobs", durable=True, arguments={"x-retry-intervals": [600_000]})
        ch.basic_publish("", "jobs", b"work", pika.BasicProperties(message_id="job-1", delivery_mode=2))
        method, _, _ = ch.basic_get("jobs")
        assert method is not None
        ch.basic_reject(method.delivery_tag, requeue=False)  # waits 10 minutes in the broker
        ch.queue_declare("jobs", passive=True)  # a round trip: the reject is processed

        assert api.request("POST", ACTIONS, {"action": "retry_now"})[0] == 400
        assert api.request("POST", ACTIONS, {"action": "retry_now", "message_id": ""})[0] == 400
        code, answer, _ = api.request("POST", ACTIONS, {"action": "retry_now", "message_id": "job-2"})
        assert code == 404 and "no message 'job-2' waiting" in answer["reason"]
        assert api.request("POST", "/api/queues/%2F/nope/actions",
                           {"action": "retry_now", "message_id": "job-1"})[0] == 404

        api.ok("PUT", "/api/users/wanda", {"password": "pw", "tags": "management"})
        api.ok("PUT", "/api/permissions/%2F/wanda", {"configure": "", "write": "", "read": "jobs"})
        code, _, _ = Client(http_server.http_port, "wanda", "pw").request(
            "POST", ACTIONS, {"action": "retry_now", "message_id": "job-1"})
        assert code == 401  # like move: read on the queue and write on amq.default are needed
        assert ch.queue_declare("jobs", passive=True).method.message_count == 0

        assert api.ok("POST", ACTIONS, {"action": "retry_now", "message_id": "job-1"}) == {"released": True}
        deadline = time.monotonic() + 10
        while (got := ch.basic_get("jobs", auto_ack=True))[0] is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        method, props, body = got
        assert body == b"work" and props.message_id == "job-1" and props.headers["x-retry-count"] == 1
        assert api.request("POST", ACTIONS, {"action": "retry_now", "message_id": "job-1"})[0] == 404
    finally:
        conn.close()
