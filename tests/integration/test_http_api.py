"""The management HTTP API against a real Leveret (AMQP on one ephemeral port, HTTP on another); effects are
checked over AMQP with pika where they matter."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pika
import pytest

from leveret.config import Config, ConfigError
from leveret.node import ThreadedServer

from httphelp import Client
from serverproc import LeveretProcess


@pytest.fixture
def server(http_server: ThreadedServer) -> ThreadedServer:
    return http_server


@pytest.fixture
def api(server: ThreadedServer) -> Client:
    return Client(server.http_port)


def amqp(server: ThreadedServer, user: str = "guest", password: str = "guest",
         vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", server.port, vhost, pika.PlainCredentials(user, password), connection_attempts=1))


# --- configuration ---------------------------------------------------------------------------------------


def test_config_http_port_validation() -> None:
    assert Config(http_port=-1).http_port == -1
    assert Config().http_port == 15672 and Config().http_bind == "127.0.0.1"
    with pytest.raises(ConfigError, match="http_port"):
        Config(http_port=-2)
    with pytest.raises(ConfigError, match="http_bind"):
        Config(http_bind=" ")


def test_http_disabled(make_config: Callable[..., Config]) -> None:
    srv = ThreadedServer(make_config(http_port=-1)).start()
    try:
        assert srv.http_port == -1 and srv.server.http is None
    finally:
        srv.stop()


# --- overview, health, auth ------------------------------------------------------------------------------


def test_overview_counts_connections_and_messages(server: ThreadedServer, api: Client) -> None:
    conn = amqp(server)
    ch = conn.channel()
    ch.queue_declare("ov")
    ch.basic_publish("", "ov", b"x")
    ch.basic_consume("ov", lambda *a: None)  # one consumer, the message goes unacked to it
    conn.process_data_events(0.2)
    info = api.get("/api/overview")
    assert info["product_name"] == "Leveret" and info["rabbitmq_version"] == "3.10.8"
    assert info["node"].startswith("leveret@")
    totals = info["object_totals"]
    assert totals["queues"] == 1 and totals["connections"] == 1 and totals["channels"] == 1
    assert totals["consumers"] == 1 and totals["exchanges"] == 8  # RabbitMQ's 7 and amq.leveret.status
    (node,) = api.get("/api/nodes")
    assert node["name"] == info["node"] and node["running"] is True and node["mem_alarm"] is False
    assert api.get("/api/nodes/" + node["name"])["name"] == node["name"]
    assert info["queue_totals"] == {"messages": 1, "messages_ready": 0, "messages_unacknowledged": 1}
    conn.close()


def test_auth_failures(server: ThreadedServer, api: Client) -> None:
    status, body, headers = api.request("GET", "/api/overview", auth=False)
    assert status == 401 and "WWW-Authenticate" in headers and body["error"] == "not_authorised"
    status, _, headers = api.request("GET", "/api/overview", auth=("guest", "wrong"))
    assert status == 401 and "WWW-Authenticate" in headers
    status, _, _ = api.request("GET", "/api/overview", auth=("nobody", "x"))
    assert status == 401
    api.ok("PUT", "/api/users/plain", {"password": "p", "tags": ""})
    api.ok("PUT", "/api/users/mon", {"password": "m", "tags": "monitoring"})
    status, body, _ = api.request("GET", "/api/overview", auth=("plain", "p"))
    assert status == 401 and body["reason"] == "Not management user"
    assert api.request("GET", "/api/queues", auth=("mon", "m"))[0] == 200
    status, body, _ = api.request("PUT", "/api/queues/%2F/nope", {}, auth=("mon", "m"))
    assert status == 401 and body["reason"] == "User not authorised to access virtual host"
    assert api.request("GET", "/api/users", auth=("mon", "m"))[0] == 401
    status, body, _ = api.request("PUT", "/api/vhosts/x", {}, auth=("mon", "m"))
    assert status == 401 and body["reason"] == "Not administrator user"
    # a management user changes objects in the vhosts it has permissions for, and only there
    api.ok("PUT", "/api/users/mgr", {"password": "g", "tags": "management"})
    api.ok("PUT", "/api/vhosts/mine", {})
    api.ok("PUT", "/api/permissions/mine/mgr", {})
    assert api.request("PUT", "/api/queues/mine/ok", {}, auth=("mgr", "g"))[0] == 201
    assert api.request("PUT", "/api/queues/%2F/no", {}, auth=("mgr", "g"))[0] == 401
    assert api.request("GET", "/api/queues/%2F", auth=("mgr", "g"))[0] == 401
    assert [q["name"] for q in api.request("GET", "/api/queues", auth=("mgr", "g"))[1]] == ["ok"]
    assert api.request("GET", "/api/queues/%2F", auth=("mon", "m"))[0] == 200  # monitoring reads every vhost
    assert api.request("PUT", "/api/policies/mine/p", {"pattern": ".", "definition": {"max-length": 1}},
                       auth=("mgr", "g"))[0] == 401
    assert server.call(lambda: sorted(server.broker.vhosts["/"].queues)) == []  # type: ignore[operator]


def test_core_errors_are_translated(api: Client) -> None:
    status, body, _ = api.request("GET", "/api/queues/%2F/missing")
    assert status == 404 and body["error"] == "Object Not Found" and "missing" in body["reason"]
    status, body, _ = api.request("DELETE", "/api/exchanges/%2F/amq.direct")
    assert status == 403 and "amq.direct" in body["reason"]
    api.ok("PUT", "/api/queues/%2F/eq", {"durable": True})
    status, body, _ = api.request("PUT", "/api/queues/%2F/eq", {"durable": False})
    assert status == 400 and "inequivalent arg 'durable'" in body["reason"]
    status, body, _ = api.request("PUT", "/api/queues/%2F/bad", raw=b"{not json")
    assert status == 400 and body["error"] == "bad_request"
    status, body, _ = api.request("GET", "/api/nothing/here")
    assert status == 404 and body == {"error": "Object Not Found", "reason": "Not Found"}
    assert api.request("GET", "/api/vhosts/nope")[0] == 404


def test_aliveness_and_alarms(server: ThreadedServer, api: Client) -> None:
    assert api.get("/api/aliveness-test/%2F") == {"status": "ok"}
    assert api.get("/api/health/checks/alarms") == {"status": "ok"}
    server.call(server.broker.memory.set_disk_alarm, True, 1, 100)
    status, body, _ = api.request("GET", "/api/health/checks/alarms")
    assert status == 503 and body["status"] == "failed" and body["alarms"][0]["resource"] == "disk"
    server.call(server.broker.memory.set_disk_alarm, False, 1000, 100)
    assert api.get("/api/health/checks/alarms") == {"status": "ok"}


# --- vhosts, users, permissions --------------------------------------------------------------------------


def test_vhosts_users_permissions_over_amqp(server: ThreadedServer, api: Client) -> None:
    assert [v["name"] for v in api.get("/api/vhosts")] == ["/"]
    assert api.request("PUT", "/api/vhosts/dev")[0] == 201
    assert api.request("PUT", "/api/vhosts/dev")[0] == 204
    assert {v["name"] for v in api.get("/api/vhosts")} == {"/", "dev"}
    assert api.request("PUT", "/api/users/alice", {"password": "secret", "tags": "management"})[0] == 201
    user = api.get("/api/users/alice")
    assert user["tags"] == ["management"] and user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqp(server, "alice", "secret", "dev")  # no permission yet
    assert api.request("PUT", "/api/permissions/dev/alice", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    assert api.get("/api/permissions/dev/alice")["vhost"] == "dev"
    assert {"user": "alice", "vhost": "dev"}.items() <= api.get("/api/users/alice/permissions")[0].items()
    conn = amqp(server, "alice", "secret", "dev")
    conn.channel().queue_declare("in-dev")
    conn.close()
    assert api.get("/api/queues/dev/in-dev")["vhost"] == "dev"
    # a management user sees its vhost, not others
    assert [v["name"] for v in api.request("GET", "/api/vhosts", auth=("alice", "secret"))[1]] == ["dev"]
    api.ok("DELETE", "/api/permissions/dev/alice")
    assert api.request("GET", "/api/permissions/dev/alice")[0] == 404
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqp(server, "alice", "secret", "dev")
    # password change, then deletion
    api.ok("PUT", "/api/users/alice", {"password": "other", "tags": ["administrator"]})
    api.ok("PUT", "/api/permissions/%2F/alice", {})
    amqp(server, "alice", "other").close()
    api.ok("DELETE", "/api/users/alice")
    assert api.request("GET", "/api/users/alice")[0] == 404
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqp(server, "alice", "other")
    api.ok("DELETE", "/api/vhosts/dev")
    assert api.request("GET", "/api/queues/dev")[0] == 404
    assert api.request("DELETE", "/api/vhosts/dev")[0] == 404


def test_user_with_password_hash(server: ThreadedServer, api: Client) -> None:
    salt = b"\x01\x02\x03\x04"
    password_hash = base64.b64encode(salt + hashlib.sha256(salt + b"hashed").digest()).decode()
    api.ok("PUT", "/api/users/bob", {"password_hash": password_hash, "tags": ""})
    api.ok("PUT", "/api/permissions/%2F/bob", {})
    amqp(server, "bob", "hashed").close()
    assert api.request("PUT", "/api/users/bob2", {"password_hash": "short"})[0] == 400
    assert api.request("PUT", "/api/users/bob3", {"tags": ""})[0] == 400  # no password for a new user


# --- queues ----------------------------------------------------------------------------------------------


def test_queue_declare_publish_get_purge_delete(server: ThreadedServer, api: Client) -> None:
    api.ok("PUT", "/api/queues/%2F/work", {"durable": True, "auto_delete": False,
                                           "arguments": {"x-max-length": 10}})
    info = api.get("/api/queues/%2F/work")
    assert info["durable"] is True and info["arguments"] == {"x-max-length": 10} and info["messages"] == 0
    conn = amqp(server)
    ch = conn.channel()
    ch.queue_declare("work", passive=True)
    for i in range(3):
        ch.basic_publish("", "work", f"m{i}".encode(), pika.BasicProperties(content_type="text/plain"))
    conn.process_data_events(0.1)
    assert api.get("/api/queues/%2F/work")["messages_ready"] == 3
    assert [q["name"] for q in api.get("/api/queues/%2F")] == ["work"]
    got = api.ok("POST", "/api/queues/%2F/work/get", {"count": 2, "ackmode": "ack_requeue_true",
                                                      "encoding": "auto", "truncate": 50000})
    assert [m["payload"] for m in got] == ["m0", "m1"]
    assert got[0]["properties"] == {"content_type": "text/plain"} and got[0]["payload_encoding"] == "string"
    assert got[1]["message_count"] == 1
    assert api.get("/api/queues/%2F/work")["messages_ready"] == 3  # requeued
    got = api.ok("POST", "/api/queues/%2F/work/get", {"count": 1, "ackmode": "ack_requeue_false",
                                                      "encoding": "base64"})
    assert got[0]["redelivered"] is True and base64.b64decode(got[0]["payload"]) == b"m0"
    assert api.get("/api/queues/%2F/work")["messages_ready"] == 2
    method, _, body = ch.basic_get("work", auto_ack=True)
    assert body == b"m1" and method.redelivered
    api.ok("DELETE", "/api/queues/%2F/work/contents")
    assert api.get("/api/queues/%2F/work")["messages"] == 0
    api.ok("DELETE", "/api/queues/%2F/work")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_declare("work", passive=True)
    conn.close()
    assert api.request("DELETE", "/api/queues/%2F/work")[0] == 404


def test_get_binary_and_truncated(api: Client) -> None:
    api.ok("PUT", "/api/queues/%2F/bin", {})
    api.ok("POST", "/api/exchanges/%2F/amq.default/publish",
           {"properties": {}, "routing_key": "bin", "payload": base64.b64encode(b"\xff\x00abc").decode(),
            "payload_encoding": "base64"})
    got = api.ok("POST", "/api/queues/%2F/bin/get", {"count": 1, "ackmode": "ack_requeue_false",
                                                     "encoding": "auto", "truncate": 3})
    assert got[0]["payload_encoding"] == "base64" and base64.b64decode(got[0]["payload"]) == b"\xff\x00a"
    assert got[0]["payload_bytes"] == 5
    assert api.request("POST", "/api/queues/%2F/bin/get", {"count": 1, "ackmode": "nope"})[0] == 400
    bad = {"properties": {"expiration": "soon"}, "routing_key": "bin", "payload": "x", "payload_encoding": "string"}
    assert api.request("POST", "/api/exchanges/%2F/amq.default/publish", bad)[0] == 400
    bad = {"properties": {"delivery_mode": "two"}, "routing_key": "bin", "payload": "x", "payload_encoding": "string"}
    assert api.request("POST", "/api/exchanges/%2F/amq.default/publish", bad)[0] == 400
    assert api.get("/api/queues/%2F/bin")["messages"] == 0


def test_queue_actions_move_and_replay_dead_letters(server: ThreadedServer, api: Client) -> None:
    """Leveret's queue actions: move messages to another queue and replay dead letters, server-side."""
    conn = amqp(server)
    ch = conn.channel()
    ch.queue_declare("mv-src", durable=True)
    ch.queue_declare("mv-dst", durable=True)
    for i in range(4):
        ch.basic_publish("", "mv-src", f"m{i}".encode(),
                         pika.BasicProperties(message_id=f"id{i}", headers={"n": i}, delivery_mode=2))
    conn.process_data_events(0.1)
    path = "/api/queues/%2F/mv-src/actions"
    assert api.ok("POST", path, {"action": "move", "destination": "mv-dst", "count": 3}) == {"moved": 3, "left": 1}
    method, props, body = ch.basic_get("mv-dst", auto_ack=True)
    assert body == b"m0" and props.message_id == "id0" and props.headers == {"n": 0} and not method.redelivered
    assert method.routing_key == "mv-dst"
    assert api.ok("POST", path, {"action": "move", "destination": "mv-dst"}) == {"moved": 1, "left": 0}
    assert api.get("/api/queues/%2F/mv-dst")["messages_ready"] == 3
    assert api.request("POST", path, {"action": "move", "destination": "nowhere"})[0] == 404
    assert api.request("POST", path, {"action": "move", "destination": "mv-src"})[0] == 400
    assert api.request("POST", path, {"action": "move"})[0] == 400
    assert api.request("POST", path, {"action": "explode"})[0] == 400
    assert api.request("POST", path, {"action": "move", "destination": "mv-dst", "count": -1})[0] == 400
    assert api.request("POST", path, {"action": "sync"})[0] == 204  # RabbitMQ's action: nothing to sync
    missing = {"action": "move", "destination": "mv-dst"}
    assert api.request("POST", "/api/queues/%2F/missing/actions", missing)[0] == 404

    # dead letters go back to the queue they died in, whatever the reason
    ch.queue_declare("mv-dlq")
    dead = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "mv-dlq"}
    ch.queue_declare("mv-a", arguments=dead)
    ch.queue_declare("mv-b", arguments={**dead, "x-max-length": 1})
    ch.basic_publish("", "mv-a", b"rejected")
    ch.basic_publish("", "mv-b", b"dropped")
    ch.basic_publish("", "mv-b", b"kept")  # pushes "dropped" out of mv-b (maxlen)
    method, _, body = ch.basic_get("mv-a")
    assert body == b"rejected"
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.basic_get("mv-b", auto_ack=True)  # make room for the replayed one
    conn.process_data_events(0.1)
    assert api.get("/api/queues/%2F/mv-dlq")["messages_ready"] == 2
    assert api.ok("POST", "/api/queues/%2F/mv-dlq/actions", {"action": "replay_dead_letters"}) == {
        "moved": 2, "left": 0}
    _, props, body = ch.basic_get("mv-a", auto_ack=True)
    assert body == b"rejected" and props.headers["x-death"][0]["reason"] == "rejected"
    assert ch.basic_get("mv-b", auto_ack=True)[2] == b"dropped"
    # leveret.tasks workers publish the tasks that gave up to <queue>.dead themselves (no x-death): back to <queue>,
    # with a fresh x-retry-count
    ch.queue_declare("mv-jobs")
    ch.queue_declare("mv-jobs.dead")
    ch.basic_publish("", "mv-jobs.dead", b"gave up", pika.BasicProperties(
        headers={"x-leveret-reason": "retries_exhausted", "x-retry-count": 3}))
    ch.basic_publish("", "mv-jobs.dead", b"no origin", pika.BasicProperties(headers={"x-death": [{"queue": "gone"}]}))
    conn.process_data_events(0.1)
    assert api.ok("POST", "/api/queues/%2F/mv-jobs.dead/actions", {"action": "replay_dead_letters"}) == {
        "moved": 1, "left": 1}  # stops at the message whose queue is gone
    _, props, body = ch.basic_get("mv-jobs", auto_ack=True)
    assert body == b"gave up" and props.headers == {"x-leveret-reason": "retries_exhausted"}
    method, _, body = ch.basic_get("mv-jobs.dead", auto_ack=True)
    assert body == b"no origin" and method.redelivered  # left at its place
    conn.close()

    # the checks of a get (read on the source) and a publish (write on the default exchange)
    api.ok("PUT", "/api/users/mover", {"password": "pw", "tags": "management"})
    api.ok("PUT", "/api/permissions/%2F/mover", {"configure": "", "write": "", "read": ".*"})
    mover = Client(server.http_port, "mover", "pw")
    refused = mover.request("POST", "/api/queues/%2F/mv-dst/actions", {"action": "move", "destination": "mv-src"})
    assert refused[0] == 401
    assert api.get("/api/queues/%2F/mv-dst")["messages_ready"] == 3


# --- exchanges, publish, bindings ------------------------------------------------------------------------


def test_exchange_publish_reaches_amqp_consumer(server: ThreadedServer, api: Client) -> None:
    api.ok("PUT", "/api/exchanges/%2F/events", {"type": "topic", "durable": True})
    info = api.get("/api/exchanges/%2F/events")
    assert info["type"] == "topic" and info["durable"] is True
    assert "events" in [e["name"] for e in api.get("/api/exchanges/%2F")]
    assert "" in [e["name"] for e in api.get("/api/exchanges")]
    conn = amqp(server)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "events", "order.*")
    result = api.ok("POST", "/api/exchanges/%2F/events/publish",
                    {"properties": {"delivery_mode": 2, "headers": {"k": "v"}, "correlation_id": "c1"},
                     "routing_key": "order.created", "payload": "hello", "payload_encoding": "string"})
    assert result == {"routed": True}
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"hello" and method.routing_key == "order.created" and method.exchange == "events"
    assert props.headers == {"k": "v"} and props.correlation_id == "c1" and props.delivery_mode == 2
    unrouted = api.ok("POST", "/api/exchanges/%2F/events/publish",
                      {"properties": {}, "routing_key": "nothing", "payload": "x", "payload_encoding": "string"})
    assert unrouted == {"routed": False}
    conn.close()
    assert api.request("PUT", "/api/exchanges/%2F/bad", {"type": "nonsense"})[0] == 400
    api.ok("DELETE", "/api/exchanges/%2F/events")
    assert api.request("GET", "/api/exchanges/%2F/events")[0] == 404


def test_bindings(server: ThreadedServer, api: Client) -> None:
    api.ok("PUT", "/api/exchanges/%2F/logs", {"type": "direct"})
    api.ok("PUT", "/api/exchanges/%2F/more", {"type": "fanout"})
    api.ok("PUT", "/api/queues/%2F/errors", {})
    status, _, headers = api.request("POST", "/api/bindings/%2F/e/logs/q/errors", {"routing_key": "error/x",
                                                                                   "arguments": {}})
    assert status == 201 and headers["Location"] == "error%2Fx"
    api.ok("POST", "/api/bindings/%2F/e/logs/q/errors", {"routing_key": "warn", "arguments": {"a": 1}})
    api.ok("POST", "/api/bindings/%2F/e/more/e/logs", {"routing_key": ""})
    between = api.get("/api/bindings/%2F/e/logs/q/errors")
    assert {b["routing_key"] for b in between} == {"error/x", "warn"}
    keys = {b["routing_key"]: b["properties_key"] for b in between}
    assert keys["error/x"] == "error%2Fx" and keys["warn"].startswith("warn~")
    everything = api.get("/api/bindings/%2F")
    assert {"source": "", "destination": "errors", "routing_key": "errors"}.items() <= everything[0].items()
    assert any(b["destination_type"] == "exchange" and b["source"] == "more" for b in everything)
    # the bindings route over AMQP
    conn = amqp(server)
    ch = conn.channel()
    ch.basic_publish("more", "anything", b"via-e2e")  # more -> logs (no key "anything") -> nothing
    ch.basic_publish("logs", "error/x", b"direct")
    conn.process_data_events(0.1)
    assert ch.basic_get("errors", auto_ack=True)[2] == b"direct"
    quoted = keys["error/x"].replace("%", "%25")  # the key is quoted once more in the URL, as rabbitmqadmin does
    assert api.get("/api/bindings/%2F/e/logs/q/errors/" + quoted)["routing_key"] == "error/x"
    api.ok("DELETE", "/api/bindings/%2F/e/logs/q/errors/" + quoted)
    api.ok("DELETE", "/api/bindings/%2F/e/logs/q/errors/" + keys["warn"])
    assert api.get("/api/bindings/%2F/e/logs/q/errors") == []
    ch.basic_publish("logs", "error/x", b"gone")
    conn.process_data_events(0.1)
    assert ch.basic_get("errors", auto_ack=True)[0] is None
    conn.close()
    assert api.request("DELETE", "/api/bindings/%2F/e/logs/q/errors/nope")[0] == 404
    assert api.request("POST", "/api/bindings/%2F/e/missing/q/errors", {})[0] == 404


# --- policies --------------------------------------------------------------------------------------------


def test_policies_apply_to_queues(server: ThreadedServer, api: Client) -> None:
    api.ok("PUT", "/api/queues/%2F/limited.q", {})
    api.ok("PUT", "/api/policies/%2F/cap", {"pattern": "^limited\\.", "definition": {"max-length": 1},
                                            "priority": 1, "apply-to": "queues"})
    policy = api.get("/api/policies/%2F/cap")
    assert policy["definition"] == {"max-length": 1} and policy["apply-to"] == "queues"
    assert [p["name"] for p in api.get("/api/policies")] == ["cap"]
    assert api.get("/api/queues/%2F/limited.q")["policy"] == "cap"
    conn = amqp(server)
    ch = conn.channel()
    for i in range(3):
        ch.basic_publish("", "limited.q", str(i).encode())
    conn.process_data_events(0.1)
    assert api.get("/api/queues/%2F/limited.q")["messages"] == 1
    conn.close()
    status, body, _ = api.request("PUT", "/api/policies/%2F/bad", {"pattern": ".*", "definition": {"nope": 1}})
    assert status == 400 and "unknown policy key" in body["reason"]
    api.ok("DELETE", "/api/policies/%2F/cap")
    assert api.request("GET", "/api/policies/%2F/cap")[0] == 404
    assert api.request("DELETE", "/api/policies/%2F/cap")[0] == 404


# --- definitions -----------------------------------------------------------------------------------------


def test_definitions_round_trip(server: ThreadedServer, api: Client, make_config: Callable[..., Config],
                                tmp_path: Any) -> None:
    api.ok("PUT", "/api/vhosts/app", {})
    api.ok("PUT", "/api/users/carol", {"password": "c4rol", "tags": "management"})
    api.ok("PUT", "/api/permissions/app/carol", {})
    api.ok("PUT", "/api/exchanges/app/orders", {"type": "topic", "durable": True})
    api.ok("PUT", "/api/queues/app/orders.new", {"durable": True, "arguments": {"x-message-ttl": 60000}})
    api.ok("POST", "/api/bindings/app/e/orders/q/orders.new", {"routing_key": "new.#"})
    api.ok("PUT", "/api/policies/app/ttl", {"pattern": "^orders", "definition": {"expires": 100000},
                                            "apply-to": "queues"})
    exported = api.get("/api/definitions")
    assert exported["rabbit_version"] == "3.10.8"
    assert {"name": "carol", "hashing_algorithm": "rabbit_password_hashing_sha256"}.items() <= \
        next(u for u in exported["users"] if u["name"] == "carol").items()
    assert {"source": "orders", "destination": "orders.new", "routing_key": "new.#"}.items() <= \
        exported["bindings"][0].items()
    assert not any(e["name"].startswith("amq.") or not e["name"] for e in exported["exchanges"])

    fresh = ThreadedServer(make_config(http_port=0, data_dir=str(tmp_path / "fresh"))).start()
    try:
        other = Client(fresh.http_port)
        assert other.request("POST", "/api/definitions", exported)[0] == 204
        again = other.get("/api/definitions")
        for key in ("vhosts", "permissions", "policies", "queues", "exchanges", "bindings"):
            assert sorted(map(json.dumps, again[key])) == sorted(map(json.dumps, exported[key])), key
        assert sorted(u["name"] for u in again["users"]) == ["carol", "guest"]
        conn = amqp(fresh, "carol", "c4rol", "app")
        ch = conn.channel()
        ch.basic_publish("orders", "new.1", b"routed")
        conn.process_data_events(0.1)
        assert ch.basic_get("orders.new", auto_ack=True)[2] == b"routed"
        conn.close()
    finally:
        fresh.stop()


def test_import_rabbitmq_definitions_file(server: ThreadedServer, api: Client) -> None:
    salt = os.urandom(4)
    password_hash = base64.b64encode(salt + hashlib.sha256(salt + b"from-rabbit").digest()).decode()
    document = {
        "rabbit_version": "3.10.8",
        "rabbitmq_version": "3.10.8",
        "product_name": "RabbitMQ",
        "product_version": "3.10.8",
        "users": [{"name": "rabbit", "password_hash": password_hash,
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator", "limits": {}}],
        "vhosts": [{"name": "/"}, {"name": "prod"}],
        "permissions": [{"user": "rabbit", "vhost": "prod", "configure": ".*", "write": ".*", "read": ".*"}],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [{"name": "cluster_name", "value": "rabbit@host"}],
        "policies": [{"vhost": "prod", "name": "dlx", "pattern": "^jobs$", "apply-to": "queues",
                      "definition": {"dead-letter-exchange": "dead"}, "priority": 0}],
        "queues": [{"name": "jobs", "vhost": "prod", "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [{"name": "work", "vhost": "prod", "type": "direct", "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {}}],
        "bindings": [{"source": "work", "vhost": "prod", "destination": "jobs", "destination_type": "queue",
                      "routing_key": "job", "arguments": {}}],
    }
    assert api.request("POST", "/api/definitions", document)[0] == 204
    assert api.get("/api/queues/prod/jobs")["policy"] == "dlx"
    conn = amqp(server, "rabbit", "from-rabbit", "prod")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("work", "job", b"j1")
    assert ch.basic_get("jobs", auto_ack=True)[2] == b"j1"
    conn.close()
    # the imported administrator can use the API too
    assert Client(server.http_port, "rabbit", "from-rabbit").get("/api/whoami")["name"] == "rabbit"
    bad = {"users": [{"name": "md5", "password_hash": "x", "hashing_algorithm": "rabbit_password_hashing_md5"}]}
    assert api.request("POST", "/api/definitions", bad)[0] == 400


# --- metrics ---------------------------------------------------------------------------------------------


def test_metrics(server: ThreadedServer, api: Client) -> None:
    api.ok("PUT", "/api/queues/%2F/m", {})
    api.ok("POST", "/api/exchanges/%2F/amq.default/publish",
           {"properties": {}, "routing_key": "m", "payload": "x", "payload_encoding": "string"})
    conn = amqp(server)
    status, text, headers = api.request("GET", "/metrics", auth=False)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = text.decode().splitlines()
    assert 'rabbitmq_queue_messages_ready{queue="m",vhost="/"} 1.0' in lines
    assert 'rabbitmq_queue_messages_unacked{queue="m",vhost="/"} 0.0' in lines
    assert 'rabbitmq_queue_consumers{queue="m",vhost="/"} 0.0' in lines
    assert "rabbitmq_connections 1.0" in lines and "rabbitmq_queues 1.0" in lines
    conn.close()


def test_a_move_answered_survives_a_crash_exactly_once(tmp_path: Any) -> None:
    """The move's answer comes after its one durability batch is committed: a SIGKILL right after it loses no
    message and duplicates none (each is in the destination or the source, once)."""
    import re

    from serverproc import LeveretProcess
    from waiting import poll

    def http_port(proc: LeveretProcess) -> int:
        pattern = r"management API listening on http://[^:]+:(\d+)/"
        assert poll(lambda: any(re.search(pattern, line) for line in proc.lines), timeout=10, interval=0.05)
        return int(next(m.group(1) for line in proc.lines if (m := re.search(pattern, line))))

    proc = LeveretProcess(tmp_path / "data").start()
    try:
        api = Client(http_port(proc))
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", proc.port, connection_attempts=1))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("crash-src", durable=True)
        ch.queue_declare("crash-dst", durable=True)
        for i in range(50):
            ch.basic_publish("", "crash-src", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
        conn.close()
        moved = api.ok("POST", "/api/queues/%2F/crash-src/actions",
                       {"action": "move", "destination": "crash-dst", "count": 30})
        assert moved == {"moved": 30, "left": 20}
        proc.kill()  # SIGKILL: no shutdown, no last flush
        proc.start()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", proc.port, connection_attempts=1))
        ch = conn.channel()

        def drain(queue: str) -> list[bytes]:
            bodies = []
            while (got := ch.basic_get(queue, auto_ack=True))[0] is not None:
                bodies.append(got[2])
            return bodies

        assert drain("crash-dst") == [f"m{i}".encode() for i in range(30)]
        assert drain("crash-src") == [f"m{i}".encode() for i in range(30, 50)]
        conn.close()
    finally:
        proc.kill()


def test_definitions_made_over_http_survive_a_restart(make_config: Callable[..., Config]) -> None:
    config = make_config(http_port=0)
    srv = ThreadedServer(config).start()
    try:
        api = Client(srv.http_port)
        api.ok("PUT", "/api/vhosts/keep", {})
        api.ok("PUT", "/api/users/dave", {"password": "d", "tags": "monitoring"})
        api.ok("PUT", "/api/permissions/keep/dave", {})
        api.ok("PUT", "/api/queues/keep/q", {"durable": True})
        api.ok("PUT", "/api/policies/keep/p", {"pattern": "^q$", "definition": {"max-length": 5}})
        api.ok("POST", "/api/exchanges/keep/amq.default/publish",
               {"properties": {"delivery_mode": 2}, "routing_key": "q", "payload": "kept",
                "payload_encoding": "string"})
        api.ok("PUT", "/api/users/gone", {"password": "g"})
        api.ok("DELETE", "/api/users/gone")
        api.ok("PUT", "/api/vhosts/dropped", {})
        api.ok("PUT", "/api/queues/dropped/q", {"durable": True})
        api.ok("DELETE", "/api/vhosts/dropped")
    finally:
        srv.stop()
    srv = ThreadedServer(config).start()
    try:
        api = Client(srv.http_port)
        assert {v["name"] for v in api.get("/api/vhosts")} == {"/", "keep"}
        assert sorted(u["name"] for u in api.get("/api/users")) == ["dave", "guest"]
        assert api.get("/api/queues/keep/q")["policy"] == "p"
        got = api.ok("POST", "/api/queues/keep/q/get", {"count": 1, "ackmode": "ack_requeue_false",
                                                        "encoding": "auto"})
        assert got[0]["payload"] == "kept"
        amqp(srv, "dave", "d", "keep").close()
    finally:
        srv.stop()


def test_connections_channels_consumers(server: ThreadedServer, api: Client) -> None:
    conn = amqp(server)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=7)
    ch.queue_declare("c")
    ch.basic_consume("c", lambda *a: None, consumer_tag="tag-1")
    conn.process_data_events(0.1)
    (connection,) = api.get("/api/connections")
    assert connection["user"] == "guest" and connection["vhost"] == "/" and connection["channels"] == 1
    assert connection["name"].endswith(f"-> 127.0.0.1:{server.port}")
    quoted = urllib.request.quote(connection["name"], safe="")
    assert api.get("/api/connections/" + quoted)["peer_port"] == connection["peer_port"]
    (channel,) = api.get("/api/channels")
    assert channel["prefetch_count"] == 7 and channel["consumer_count"] == 1
    (consumer,) = api.get("/api/consumers/%2F")
    assert consumer["consumer_tag"] == "tag-1" and consumer["queue"] == {"name": "c", "vhost": "/"}
    conn.close()
    assert api.get("/api/connections") == []
    assert api.request("GET", "/api/connections/nope")[0] == 404


def test_rabbitmqadmin_works_against_leveret(server: ThreadedServer, api: Client, tmp_path: Any) -> None:
    """RabbitMQ's own command-line tool, where it is installed."""
    tool = shutil.which("rabbitmqadmin")
    if tool is None:
        pytest.skip("rabbitmqadmin is not installed")

    def admin(*args: str) -> str:
        done = subprocess.run([tool, "-H", "127.0.0.1", "-P", str(server.http_port), *args], capture_output=True,
                              text=True, timeout=20)
        assert done.returncode == 0 and "***" not in done.stdout + done.stderr, (args, done.stdout, done.stderr)
        return done.stdout

    admin("declare", "exchange", "name=ra.x", "type=fanout")
    admin("declare", "queue", "name=ra.q", "durable=true")
    admin("declare", "binding", "source=ra.x", "destination=ra.q")
    admin("publish", "exchange=ra.x", "routing_key=k", "payload=from-admin")
    assert "from-admin" in admin("get", "queue=ra.q", "ackmode=ack_requeue_false")
    assert "ra.q" in admin("list", "queues")
    admin("export", str(tmp_path / "defs.json"))
    assert json.loads((tmp_path / "defs.json").read_text())["queues"][0]["name"] == "ra.q"
    admin("delete", "queue", "name=ra.q")
    admin("import", str(tmp_path / "defs.json"))
    assert api.get("/api/queues/%2F/ra.q")["durable"] is True


# --- closing connections ---------------------------------------------------------------------------------


def _connection_names(api: Client) -> list[str]:
    return sorted(c["name"] for c in api.get("/api/connections"))


def _wait_for_names(api: Client, expected: list[str]) -> list[str]:
    names: list[str] = []
    for _ in range(100):  # the closed connection leaves the list once its close-ok arrives
        names = _connection_names(api)
        if names == sorted(expected):
            break
        time.sleep(0.05)
    return names


def test_delete_connection_closes_it_with_320_and_the_reason(server: ThreadedServer, api: Client) -> None:
    victim, bystander = amqp(server), amqp(server)
    victim_channel = victim.channel()
    victim_channel.queue_declare("", exclusive=True)
    bystander_channel = bystander.channel()
    bystander_channel.queue_declare("stays")
    names = _connection_names(api)
    assert len(names) == 2
    local = victim._impl._transport._sock.getsockname()  # pika's socket: find the victim's name by its port
    (name,) = [n for n in names if n.startswith(f"{local[0]}:{local[1]} ")]
    quoted = urllib.request.quote(name, safe="")
    status, _, _ = api.request("DELETE", "/api/connections/" + quoted, headers={"X-Reason": "maintenance window"})
    assert status == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(50):
            victim.process_data_events(0.1)
    assert (closed.value.reply_code, closed.value.reply_text) == (320, "CONNECTION_FORCED - maintenance window")
    assert _wait_for_names(api, [n for n in names if n != name]) == [n for n in names if n != name]
    assert api.get("/api/queues/%2F") and [q["name"] for q in api.get("/api/queues/%2F")] == ["stays"]  # exclusive gone
    bystander_channel.basic_publish("", "stays", b"still here")
    method, _, body = bystander_channel.basic_get("stays", auto_ack=True)
    assert method is not None and body == b"still here"
    assert api.request("DELETE", "/api/connections/" + quoted)[0] == 404
    bystander.close()


async def test_delete_connection_default_reason_seen_by_aio_pika(server: ThreadedServer, api: Client) -> None:
    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/", timeout=5)
    closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    connection.close_callbacks.add(lambda _conn, exc=None: closed.done() or closed.set_result(exc))
    (name,) = await asyncio.to_thread(_connection_names, api)
    path = "/api/connections/" + urllib.request.quote(name, safe="")
    status, _, _ = await asyncio.to_thread(api.request, "DELETE", path)
    assert status == 204
    exc = await asyncio.wait_for(closed, 10)
    assert isinstance(exc, aiormq.exceptions.ConnectionClosed)
    assert exc.args[:2] == (320, "CONNECTION_FORCED - Closed via management plugin")


def test_delete_connection_with_a_reason_that_is_not_utf8(server: ThreadedServer, api: Client) -> None:
    victim = amqp(server)
    (name,) = _connection_names(api)
    path = "/api/connections/" + urllib.request.quote(name, safe="")
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:  # urllib sends latin-1
        sock.sendall(f"DELETE {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n".encode()
                     + b"Connection: close\r\nX-Reason: caf\xc3\xa9 \xff\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 204 ")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(50):
            victim.process_data_events(0.1)
    assert (closed.value.reply_code, closed.value.reply_text) == (320, "CONNECTION_FORCED - café \ufffd")


def test_delete_connection_authorisation(server: ThreadedServer, api: Client) -> None:
    api.ok("PUT", "/api/users/mgr", {"password": "g", "tags": "management"})
    api.ok("PUT", "/api/permissions/%2F/mgr", {})
    admins, mine = amqp(server), amqp(server, "mgr", "g")
    by_user = {c["user"]: c["name"] for c in api.get("/api/connections")}
    mgr = Client(server.http_port, "mgr", "g")
    path = "/api/connections/" + urllib.request.quote(by_user["guest"], safe="")
    status, body, _ = mgr.request("DELETE", path)
    assert (status, body["reason"]) == (401, "User not authorised to access object")
    assert admins.is_open
    assert mgr.request("DELETE", "/api/connections/" + urllib.request.quote(by_user["mgr"], safe=""))[0] == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        for _ in range(50):
            mine.process_data_events(0.1)
    assert api.request("DELETE", path)[0] == 204  # an administrator closes anyone's
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        for _ in range(50):
            admins.process_data_events(0.1)


# --- malformed input found by the schemathesis fuzz (tests/test_http_openapi.py) ---------------------------


def test_malformed_input_is_a_client_error_not_a_crash(server: ThreadedServer, api: Client) -> None:
    # a newline in a path segment reached aiohttp's own text/plain 404, not the API: such a queue was unreachable
    api.ok("PUT", "/api/queues/%2F/with%0Anewline", {})
    assert api.get("/api/queues/%2F/withnewline")["name"] == "withnewline"  # CR/LF stripped, as RabbitMQ's API
    status, value, _ = api.request("GET", "/api/queues/%2F/with%0Anewline")
    assert status == 404 and value["error"] == "Object Not Found"  # the API's own 404, not aiohttp's text/plain
    # a control character in ?download= made an invalid header: aiohttp dropped the connection
    status, _, headers = api.request("GET", "/api/definitions?download=a%0D%0AX-Injected:%201%22.json")
    assert status == 200 and "X-Injected" not in headers
    assert headers["Content-Disposition"] == ('attachment; filename="a__X-Injected: 1_.json"; '
                                              "filename*=UTF-8''a%0D%0AX-Injected%3A%201%22.json")
    # non-ASCII text where base64 is expected raised ValueError (500) instead of 400/401
    status, body, _ = api.request("PUT", "/api/users/u", {"password_hash": "é" * 48})
    assert (status, body["reason"]) == (400, "'password_hash' is not base64")
    status, body, _ = api.request("POST", "/api/exchanges/%2F/amq.default/publish",
                                  {"routing_key": "q", "payload": "é", "payload_encoding": "base64"})
    assert (status, body["reason"]) == (400, "payload is not valid base64")
    status, _, _ = api.request("GET", "/api/overview", auth=False, headers={"Authorization": "Basic é"})
    assert status == 401


# --- the web page ------------------------------------------------------------------------------------------


def test_web_page_and_its_files_are_served_without_credentials(api: Client) -> None:
    status, page, headers = api.request("GET", "/", auth=False)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for asset in ("static/app.js", "static/style.css"):
        assert f'"{asset}"' in page.decode()
        status, body, _ = api.request("GET", "/" + asset, auth=False)
        assert status == 200 and body
    for path in ("/static/app.js", "/static/style.css"):  # nothing from other origins (works offline)
        assert b"://" not in api.request("GET", path, auth=False)[1]
    assert "://" not in page.decode()
    assert api.request("GET", "/static/../api.py", auth=False)[0] in (403, 404)


def test_page_requests_get_401_without_a_browser_login_dialog(api: Client) -> None:
    _, _, headers = api.request("GET", "/api/overview", auth=("guest", "wrong"))
    assert "WWW-Authenticate" in headers  # tools (curl, rabbitmqadmin) are asked for credentials
    status, _, headers = api.request("GET", "/api/overview", auth=("guest", "wrong"),
                                     headers={"X-Requested-With": "XMLHttpRequest"})
    assert status == 401 and "WWW-Authenticate" not in headers


def test_bodies_must_be_json_and_blank_passwords_never_log_in(server: ThreadedServer, api: Client) -> None:
    """A cross-site <form> posts text/plain without a CORS check: such a body is refused (415, as RabbitMQ's
    API), so a page elsewhere cannot make an administrator. A blank password is refused when set and never
    logs in (RabbitMQ's internal backend)."""
    evil = json.dumps({"users": [{"name": "evil", "password": "x", "tags": "administrator"}]}).encode()
    status, body, _ = api.request("POST", "/api/definitions", raw=evil, headers={"Content-Type": "text/plain"})
    assert (status, body["error"]) == (415, "unsupported_media_type")
    assert api.request("GET", "/api/users/evil")[0] == 404
    status, body, _ = api.request("PUT", "/api/users/blank", {"password": "", "tags": ""})
    assert status == 400 and "must not be empty" in body["reason"]
    api.ok("PUT", "/api/users/nopw", {"password_hash": "", "tags": "administrator"})
    assert Client(server.http_port, "nopw", "").request("GET", "/api/whoami")[0] == 401
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqp(server, "nopw", "")


# --- loaded at the first connection (leveret/http/server.py) ----------------------------------------------


def _raw_request(method: str, path: str, body: bytes = b"") -> bytes:
    auth = base64.b64encode(b"guest:guest").decode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _read_status(sock: socket.socket) -> int:
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, f"closed after {answer!r}"
        answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_the_api_is_loaded_at_its_first_connection_and_answers_what_came_before(tmp_path: Any) -> None:
    """`leveret serve` binds the management port at its start but maps aiohttp only when a connection comes
    (an idle broker's memory, docs/performance.md); requests sent before it is loaded, several at once and one
    with a body, are each answered, and later connections go to aiohttp directly."""
    broker = LeveretProcess(tmp_path / "broker").start()
    try:
        port = next(int(m.group(1)) for line in broker.lines
                    if (m := re.search(r"management API listening on http://[^:]+:(\d+)/", line)))
        assert broker.proc is not None
        maps = Path(f"/proc/{broker.proc.pid}/maps")
        assert "aiohttp" not in maps.read_text()
        requests = [_raw_request("GET", "/api/overview"), _raw_request("GET", "/api/whoami"),
                    _raw_request("PUT", "/api/queues/%2F/lazy", json.dumps({"durable": True}).encode())]
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in requests]
        try:
            for sock, request in zip(socks, requests, strict=True):
                sock.sendall(request)  # all sent before any answer
            assert [_read_status(sock) for sock in socks] == [200, 200, 201]
        finally:
            for sock in socks:
                sock.close()
        assert "aiohttp" in maps.read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(_raw_request("GET", "/api/queues/%2F/lazy"))
            assert _read_status(sock) == 200
    finally:
        broker.kill()
