"""Message tracking by message_id (core/tracking.py): the event kinds with real pika clients, bounded memory,
``GET /api/tracking/{vhost}/{id}`` and ``leveret track``. The timed lifecycle events (expiry, delays, retries) are
tested on the core with a manual clock in unit/test_core_tracking.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from leveret.config import Config
from leveret.core.message import Message, build_address, build_header
from leveret.core.tracking import Tracker, message_id_of
from leveret.node import ThreadedServer

from amqphelp import connect
from waiting import poll


@pytest.fixture
def server(make_config: Callable[..., Config]) -> Iterator[ThreadedServer]:
    # a short data dir: the control socket (for `leveret track`) lives there and AF_UNIX paths are short
    data_dir = tempfile.mkdtemp(prefix="lv-", dir="/tmp")
    srv = ThreadedServer(make_config(data_dir=data_dir, http_port=0, store="memory")).start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def channel(server: ThreadedServer) -> Iterator[BlockingChannel]:
    connection = connect(server.port)
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def events(server: ThreadedServer, message_id: str, vhost: str = "/") -> list[dict[str, Any]]:
    return server.call(lambda: server.broker.tracker.events(vhost, message_id))  # type: ignore[return-value]


def wait_events(server: ThreadedServer, message_id: str, until: str, count: int = 1,
                timeout: float = 10) -> list[dict[str, Any]]:
    """The events of ``message_id`` once ``count`` events of kind ``until`` are there (bounded wait)."""
    found = poll(lambda: events(server, message_id), lambda found: sum(e["event"] == until for e in found) >= count,
                 timeout, 0.02)
    assert sum(e["event"] == until for e in found) >= count, f"no {until!r} event for {message_id}: {found}"
    return found


def kinds(found: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in found]


def props(message_id: str, **more: Any) -> pika.BasicProperties:
    return pika.BasicProperties(message_id=message_id, **more)


def test_published_routed_delivered_and_acked(server: ThreadedServer, channel: BlockingChannel) -> None:
    channel.exchange_declare("orders", "topic")
    channel.queue_declare("billing")
    channel.queue_declare("audit")
    channel.queue_bind("billing", "orders", "order.*")
    channel.queue_bind("audit", "orders", "#")
    channel.basic_publish("orders", "order.created", b"{}", props("m-1"))
    channel.basic_qos(prefetch_count=1)
    got: list[int] = []
    channel.basic_consume("billing", lambda ch, m, p, b: got.append(m.delivery_tag), consumer_tag="biller")
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.05)
    channel.basic_ack(got[0])
    found = wait_events(server, "m-1", "acked")
    assert kinds(found) == ["published", "delivered", "acked"]
    published, delivered, acked = found
    assert published["exchange"] == "orders" and published["routing_key"] == "order.created"
    assert sorted(published["queues"]) == ["audit", "billing"] and published["outcome"] == "routed"
    assert delivered["queue"] == "billing" and delivered["consumer_tag"] == "biller"
    assert delivered["redelivered"] is False and delivered["ack_required"] is True
    assert delivered["connection"].startswith("127.0.0.1:") and delivered["channel"] == 1
    assert acked["queue"] == "billing"
    assert published["timestamp"] <= delivered["timestamp"] <= acked["timestamp"]
    assert published["time"].endswith("+00:00")


def test_unroutable_and_returned(server: ThreadedServer, channel: BlockingChannel) -> None:
    channel.exchange_declare("nowhere", "direct")
    channel.confirm_delivery()
    channel.basic_publish("nowhere", "k", b"x", props("m-lost"))
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish("nowhere", "k", b"x", props("m-back"), mandatory=True)
    assert [(e["event"], e["outcome"], e["queues"]) for e in events(server, "m-lost")] == [
        ("published", "unroutable", [])]
    assert [(e["event"], e["outcome"]) for e in events(server, "m-back")] == [("published", "returned")]


def test_basic_get_reject_nack_and_requeue_on_close(server: ThreadedServer) -> None:
    connection = connect(server.port)
    ch = connection.channel()
    ch.queue_declare("work")
    for name in ("m-get", "m-rej", "m-nack", "m-close"):
        ch.basic_publish("", "work", name.encode(), props(name))
    method, _p, _b = ch.basic_get("work", auto_ack=True)
    method, _p, _b = ch.basic_get("work")
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, _p, _b = ch.basic_get("work")
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _p, _b = ch.basic_get("work")  # m-nack again, redelivered
    assert method.redelivered
    ch.basic_ack(method.delivery_tag)
    ch.basic_get("work")  # m-close, left unacked: requeued when the channel closes
    ch.close()
    connection.close()
    assert [(e["event"], e.get("ack_required")) for e in events(server, "m-get")] == [
        ("published", None), ("got", False)]
    rejected = wait_events(server, "m-rej", "rejected")
    assert kinds(rejected) == ["published", "got", "rejected"] and rejected[-1]["requeue"] is False
    nacked = events(server, "m-nack")
    assert kinds(nacked) == ["published", "got", "rejected", "got", "acked"]
    assert nacked[2]["requeue"] is True and nacked[3]["redelivered"] is True
    closed = wait_events(server, "m-close", "requeued")
    assert kinds(closed) == ["published", "got", "requeued"] and closed[-1]["reason"] == "channel closed"


def test_dropped_by_max_length_and_refused(server: ThreadedServer, channel: BlockingChannel) -> None:
    channel.queue_declare("capped", arguments={"x-max-length": 1})
    channel.queue_declare("strict", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    channel.basic_publish("", "capped", b"1", props("m-old"))
    channel.basic_publish("", "capped", b"2", props("m-new"))
    assert kinds(events(server, "m-old")) == ["published", "dropped"]
    assert events(server, "m-old")[-1]["reason"] == "maxlen"
    channel.basic_publish("", "strict", b"1", props("m-in"))
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", "strict", b"2", props("m-out"))
    refused = events(server, "m-out")
    assert kinds(refused) == ["published", "refused"] and refused[-1]["queue"] == "strict"
    assert "reject-publish" in refused[-1]["reason"]


def test_purged_and_queue_deleted(server: ThreadedServer, channel: BlockingChannel) -> None:
    channel.queue_declare("a")
    channel.queue_declare("b")
    channel.basic_publish("", "a", b"x", props("m-purge"))
    channel.basic_publish("", "b", b"x", props("m-gone"))
    channel.basic_publish("", "a", b"x")  # no message_id: nothing recorded, nothing fails
    assert channel.queue_purge("a").method.message_count == 2
    channel.queue_delete("b")
    assert kinds(events(server, "m-purge")) == ["published", "purged"]
    assert kinds(events(server, "m-gone")) == ["published", "queue_deleted"]
    assert server.call(lambda: len(server.broker.tracker)) == 4


def test_message_id_read_from_the_content_header() -> None:
    every = {"content_type": "application/json", "content_encoding": "gzip", "headers": {"a": 1, "b": "x"},
             "delivery_mode": 2, "priority": 3, "correlation_id": "c", "reply_to": "r", "expiration": "100",
             "message_id": "the-id", "timestamp": 5, "type": "t", "user_id": "u", "app_id": "a"}
    for present in (every, {"message_id": "x"}, {"headers": {}, "priority": 1, "message_id": "été"},
                    {"content_type": "text/plain"}):
        msg = Message("", "q", build_address("", "q"), build_header(present, 0), b"")
        assert message_id_of(msg.header, msg.flags) == present.get("message_id")


def test_a_header_with_lengths_past_its_end_has_no_id() -> None:
    """A client may send a content header whose property lengths run past its end (the broker does not decode
    properties on its fast path): a lookup must not fail on it."""
    head = (60).to_bytes(2, "big") + bytes(2) + (0).to_bytes(8, "big") + (0x8080).to_bytes(2, "big")
    assert message_id_of(head + bytes([200]) + b"victim-id", 0x8080) is None
    assert message_id_of(head + bytes([2]) + b"ab" + bytes([50]) + b"victim-id", 0x8080) is None
    tracker = Tracker(60, 100)
    msg = Message("", "q", build_address("", "q"), head + bytes([200]) + b"victim-id", b"")
    tracker.record("/", msg, "published", "", "q", (), "unroutable")
    assert tracker.events("/", "victim-id") == []


def test_vhosts_are_separate(server: ThreadedServer, channel: BlockingChannel) -> None:
    channel.queue_declare("q")
    channel.basic_publish("", "q", b"x", props("same-id"))
    channel.queue_declare("q", passive=True)
    assert kinds(events(server, "same-id")) == ["published"]
    assert events(server, "same-id", vhost="other") == []


def test_tracker_memory_is_bounded_by_events_and_window() -> None:
    clock = [1000.0]
    tracker = Tracker(window=10, max_events=4, now=lambda: clock[0])

    def msg(message_id: str) -> Message:
        header = build_header({"message_id": message_id}, 0)
        return Message("", "q", build_address("", "q"), header, b"")

    for i in range(5):
        tracker.record("/", msg(f"m{i}"), "purged", "q")
    assert len(tracker) == 4 and tracker.events("/", "m0") == [] and len(tracker.events("/", "m4")) == 1
    clock[0] += 5
    tracker.record("/", msg("m2"), "expired", "q")
    assert [e["event"] for e in tracker.events("/", "m2")] == ["purged", "expired"]
    clock[0] += 6  # the first events are older than the window now: not shown, and dropped at the next record
    assert [e["event"] for e in tracker.events("/", "m2")] == ["expired"] and tracker.events("/", "m4") == []
    tracker.record("/", msg("new"), "purged", "q")
    assert len(tracker) == 2
    assert tracker.events("/", "M2") == [] and tracker.events("other", "m2") == []


def test_http_api_and_leveret_track(server: ThreadedServer, channel: BlockingChannel) -> None:
    channel.queue_declare("q")
    channel.basic_publish("", "q", b"x", props("http-1"))
    channel.basic_get("q", auto_ack=True)

    def get(path: str) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}",
                                         headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, body = get("/api/tracking/%2F/http-1")
    assert status == 200 and [e["event"] for e in body] == ["published", "got"]
    assert body[0]["queues"] == ["q"] and isinstance(body[0]["timestamp"], float)
    status, body = get("/api/tracking/%2F/unknown")
    assert status == 404 and "no record of message id 'unknown'" in body["reason"]
    assert get("/api/tracking/nope/http-1")[0] == 404

    def track(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "leveret", "track", *args, "--data-dir",
                               server.config.data_dir], capture_output=True, text=True, timeout=60)

    shown = track("http-1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["time", "event", "details"]
    assert " published " in lines[1] and "exchange= routing_key=q queues=q outcome=routed" in lines[1]
    assert " got " in lines[2] and "ack_required=false" in lines[2]
    as_json = track("http-1", "--json")
    assert [e["event"] for e in json.loads(as_json.stdout)] == ["published", "got"]
    missing = track("unknown")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().startswith("leveret: error: no record of message id 'unknown' in vhost '/'")


def test_tracking_off(make_config: Callable[..., Config]) -> None:
    data_dir = tempfile.mkdtemp(prefix="lv-", dir="/tmp")
    srv = ThreadedServer(make_config(data_dir=data_dir, store="memory", tracking_window=0)).start()
    try:
        assert srv.broker.tracker is None
        connection: BlockingConnection = connect(srv.port)
        ch = connection.channel()
        ch.queue_declare("q")
        ch.basic_publish("", "q", b"x", props("m"))
        assert ch.basic_get("q", auto_ack=True)[2] == b"x"
        connection.close()
        result = subprocess.run([sys.executable, "-m", "leveret", "track", "m", "--data-dir", data_dir],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "message tracking is off" in result.stderr
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_messages_published_and_got_over_the_http_api(server: ThreadedServer, channel: BlockingChannel) -> None:
    from httphelp import Client

    api = Client(server.http_port)
    channel.queue_declare("hq")
    publish = {"routing_key": "hq", "payload": "x", "payload_encoding": "string",
               "properties": {"message_id": "via-http"}}
    assert api.ok("POST", "/api/exchanges/%2F/amq.default/publish", publish) == {"routed": True}
    get = {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}
    assert len(api.ok("POST", "/api/queues/%2F/hq/get", get)) == 1
    assert len(api.ok("POST", "/api/queues/%2F/hq/get", {**get, "ackmode": "ack_requeue_false"})) == 1
    found = events(server, "via-http")
    assert kinds(found) == ["published", "got", "requeued", "got", "acked"]
    assert found[0]["queues"] == ["hq"] and found[0]["outcome"] == "routed"
    assert found[1]["connection"] == "http guest@127.0.0.1" and found[3]["redelivered"] is True
    assert found[2]["reason"] == "management get"
