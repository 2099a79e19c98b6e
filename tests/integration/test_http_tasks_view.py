"""``GET /api/tasks/{vhost}``: the status book's most recently changed tasks, newest first, filtered by state,
fed through the status contract (JSON events published to ``leveret.events`` with pika)."""

from __future__ import annotations

import json
import time

import pika

from leveret.node import ThreadedServer

from httphelp import Client


def publish_event(ch: object, **event: object) -> None:
    body = {"task": "resize", "queue": "images", "attempt": 0, "ts": time.time(), "ttl": 60, **event}
    ch.basic_publish("leveret.events", f"resize.{event['state']}", json.dumps(body).encode(),  # type: ignore[attr-defined]
                     pika.BasicProperties(content_type="application/json", message_id=str(event["id"])))


def test_recent_tasks_by_state_newest_first(http_server: ThreadedServer) -> None:
    api = Client(http_server.http_port)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", http_server.port, connection_attempts=1))
    ch = conn.channel()
    ch.exchange_declare("leveret.events", "topic", durable=True)
    for i in range(5):
        publish_event(ch, id=f"t{i}", state="queued")
    publish_event(ch, id="t1", state="failed", attempt=1,
                  error={"type": "OSError", "message": "disk", "traceback": "tb"})
    publish_event(ch, id="t3", state="succeeded", result=3)
    conn.close()
    deadline = time.monotonic() + 10
    while len(tasks := api.get("/api/tasks/%2F")) < 5:
        assert time.monotonic() < deadline, tasks
        time.sleep(0.05)
    assert [t["id"] for t in tasks] == ["t3", "t1", "t4", "t2", "t0"]  # most recently changed first
    failed = api.get("/api/tasks/%2F?state=failed")
    assert [(t["id"], t["error"]["message"], t["attempt"]) for t in failed] == [("t1", "disk", 1)]
    assert [t["id"] for t in api.get("/api/tasks/%2F?limit=2")] == ["t3", "t1"]
    assert api.request("GET", "/api/tasks/%2F?state=lost")[0] == 400
    assert api.request("GET", "/api/tasks/%2F?limit=0")[0] == 400
    assert api.request("GET", "/api/tasks/no-such-vhost")[0] == 404
