"""Vhost limits (max-connections, max-queues) and user limits (max-connections, max-channels).

Enforcement is differential: the same limits are set on Leveret (core) and on the reference RabbitMQ
(rabbitmqctl), and both must refuse with RabbitMQ's codes and texts. Setting them through the management API
and ``leveret ctl``, keeping them across restarts and in definitions are Leveret's own tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingConnection

from leveret.config import Config
from leveret.node import ThreadedServer

from brokeradmin import Admin, LeveretAdmin, connect_as, rabbit_admin
from httphelp import Client


@dataclass
class Limited:
    admin: Admin
    port: int
    vhost: str
    user: str

    def connect(self) -> BlockingConnection:
        return connect_as(self.port, self.vhost, self.user)


@pytest.fixture(params=["leveret", "rabbitmq"])
def limited(request: pytest.FixtureRequest) -> Iterator[Limited]:
    """A fresh vhost and a user with every permission in it, on each broker."""
    if request.param == "rabbitmq":
        admin: Admin = rabbit_admin()
        port = 5672
    else:
        server: ThreadedServer = request.getfixturevalue("leveret")
        admin = LeveretAdmin(server)
        port = server.port
    run = uuid.uuid4().hex[:8]
    env = Limited(admin, port, f"lim-{run}", f"lim-{run}-u")
    admin.add_vhost(env.vhost)
    admin.add_user(env.user)
    admin.set_permissions(env.user, env.vhost, ".*", ".*", ".*")
    try:
        yield env
    finally:
        admin.delete_user(env.user)
        admin.delete_vhost(env.vhost)


def refused_open(env: Limited) -> str:
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        env.connect()
    return str(info.value)


def eventually_connects(env: Limited) -> BlockingConnection:
    """RabbitMQ tracks connections asynchronously: a slot freed by a close may take a moment to show."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return env.connect()
        except pika.exceptions.ProbableAccessDeniedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_vhost_max_connections(limited: Limited) -> None:
    limited.admin.set_vhost_limits(limited.vhost, {"max-connections": 1})
    first = limited.connect()
    text = refused_open(limited)
    assert (f"(530) \"NOT_ALLOWED - access to vhost '{limited.vhost}' refused for user '{limited.user}': "
            "connection limit (1) is reached\"") in text
    first.close()
    eventually_connects(limited).close()
    limited.admin.set_vhost_limits(limited.vhost, {"max-connections": 0})
    assert "connection limit (0) is reached" in refused_open(limited)
    limited.admin.set_vhost_limits(limited.vhost, {"max-connections": -1})  # negative: no limit
    connections = [limited.connect() for _ in range(3)]
    for conn in connections:
        conn.close()


def test_user_max_connections(limited: Limited) -> None:
    limited.admin.set_user_limits(limited.user, {"max-connections": 2})
    connections = [limited.connect() for _ in range(2)]
    text = refused_open(limited)
    assert (f"(530) \"NOT_ALLOWED - connection refused for user '{limited.user}': user connection limit (2) is "
            "reached\"") in text
    connections.pop().close()
    connections.append(eventually_connects(limited))
    for conn in connections:
        conn.close()
    limited.admin.clear_user_limits(limited.user)
    connections = [eventually_connects(limited) for _ in range(3)]
    for conn in connections:
        conn.close()


def test_user_max_channels_counts_every_connection_of_the_user(limited: Limited) -> None:
    limited.admin.set_user_limits(limited.user, {"max-channels": 2})
    one = limited.connect()
    two = limited.connect()
    try:
        one.channel()
        # RabbitMQ applies a new limit and counts channels asynchronously: under load the third channel can still
        # be let in; then the second connection is closed and tried again (Leveret refuses the first time)
        deadline = time.monotonic() + 10
        while True:
            ch = two.channel()
            try:
                two.channel()
            except pika.exceptions.ConnectionClosedByBroker as refused:
                info = refused
                break
            two.close()
            assert time.monotonic() < deadline, "the third channel of the user was never refused"
            time.sleep(0.05)  # poll interval
            two = limited.connect()
        assert (info.reply_code, info.reply_text) == (
            530, f"NOT_ALLOWED - number of channels opened for user '{limited.user}' has reached the maximum allowed "
                 "user limit of (2)")
        assert one.is_open and not ch.is_open
        one.channel()  # the refused connection's channel is gone: there is room again
    finally:
        for conn in (one, two):
            if conn.is_open:
                conn.close()


def test_vhost_max_queues(limited: Limited) -> None:
    limited.admin.set_vhost_limits(limited.vhost, {"max-queues": 1})
    conn = limited.connect()
    try:
        ch = conn.channel()
        ch.queue_declare("q1")
        ch.queue_declare("q1")  # an existing queue is not a new one
        ch.queue_declare("q1", passive=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("q2")
        assert (info.value.reply_code, info.value.reply_text) == (
            406, f"PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost '{limited.vhost}' (1) is "
                 "reached")
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("", exclusive=True)
        assert info.value.reply_code == 406 and "cannot declare queue 'amq.gen-" in info.value.reply_text
        ch = conn.channel()
        ch.queue_delete("q1")
        ch.queue_declare("q2")
        ch.queue_delete("q2")
    finally:
        conn.close()


# --- setting them: HTTP API, ctl, restarts, definitions (Leveret) ---------------------------------------


def test_limits_over_the_http_api(http_server: ThreadedServer) -> None:
    api = Client(http_server.http_port)
    api.ok("PUT", "/api/users/lim", {"password": "pw", "tags": ""})
    assert api.get("/api/vhost-limits") == []
    assert api.request("PUT", "/api/vhost-limits/%2F/max-connections", {"value": 1})[0] == 204
    assert api.request("PUT", "/api/vhost-limits/%2F/max-queues", {"value": 10})[0] == 204
    assert api.get("/api/vhost-limits/%2F") == [{"vhost": "/", "value": {"max-connections": 1, "max-queues": 10}}]
    assert api.request("PUT", "/api/user-limits/lim/max-channels", {"value": 5})[0] == 204
    assert api.get("/api/user-limits") == [{"user": "lim", "value": {"max-channels": 5}}]
    assert api.get("/api/users/lim")["limits"] == {"max-channels": 5}
    status, body, _ = api.request("PUT", "/api/vhost-limits/%2F/max-channels", {"value": 1})
    assert status == 400 and "unknown limit 'max-channels'" in body["reason"]
    assert api.request("PUT", "/api/user-limits/lim/max-channels", {"value": "x"})[0] == 400
    assert api.request("PUT", "/api/user-limits/nobody/max-channels", {"value": 1})[0] == 404
    assert api.request("PUT", "/api/vhost-limits/%2F/max-queues", {})[0] == 400
    # non-administrators may not touch them
    assert Client(http_server.http_port, "lim", "pw").request("GET", "/api/vhost-limits")[0] == 401

    first = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", http_server.port))
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", http_server.port, connection_attempts=1))
    first.close()
    assert api.request("DELETE", "/api/vhost-limits/%2F/max-connections")[0] == 204
    assert api.get("/api/vhost-limits/%2F") == [{"vhost": "/", "value": {"max-queues": 10}}]
    assert api.request("DELETE", "/api/user-limits/lim/max-channels")[0] == 204
    assert api.get("/api/user-limits/lim") == []


def ctl(data_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leveret", "ctl", "--data-dir", data_dir, *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_limits_with_ctl_survive_a_restart(make_config: Callable[..., Config]) -> None:
    config = make_config()
    server = ThreadedServer(config).start()
    try:
        server.call(lambda: server.broker.add_user("app", "pw"))
        set_v = ctl(config.data_dir, "set-vhost-limits", '{"max-connections": 3, "max-queues": 9}')
        assert set_v.returncode == 0, set_v.stderr
        assert ctl(config.data_dir, "set-user-limits", "app", '{"max-connections": 2}').returncode == 0
        assert ctl(config.data_dir, "set-user-limits", "app", '{"max-channels": 4}').returncode == 0  # merged
        bad = ctl(config.data_dir, "set-user-limits", "app", '{"max-queues": 4}')
        assert bad.returncode == 1 and "unknown limit 'max-queues' for user 'app'" in bad.stderr
        listed = json.loads(ctl(config.data_dir, "--json", "list-user-limits").stdout)
        assert listed == [{"user": "app", "limits": json.dumps({"max-connections": 2, "max-channels": 4})}]
        assert "max-queues" in ctl(config.data_dir, "list-vhost-limits").stdout
    finally:
        server.stop()
    server = ThreadedServer(config).start()
    try:
        assert server.call(lambda: dict(server.broker.vhosts["/"].limits)) == {"max-connections": 3, "max-queues": 9}
        assert server.call(lambda: dict(server.broker.users["app"].limits)) == {"max-connections": 2, "max-channels": 4}
        assert ctl(config.data_dir, "clear-user-limits", "app", "max-channels").returncode == 0
        assert ctl(config.data_dir, "clear-vhost-limits").returncode == 0
        assert server.call(lambda: dict(server.broker.users["app"].limits)) == {"max-connections": 2}
    finally:
        server.stop()
    server = ThreadedServer(config).start()
    try:
        assert server.call(lambda: dict(server.broker.vhosts["/"].limits)) == {}
        assert server.call(lambda: dict(server.broker.users["app"].limits)) == {"max-connections": 2}
    finally:
        server.stop()


def test_limits_in_definitions_as_rabbitmq_exports_them(http_server: ThreadedServer,
                                                        make_config: Callable[..., Config], tmp_path: Path) -> None:
    api = Client(http_server.http_port)
    api.ok("PUT", "/api/vhosts/app", {})
    api.ok("PUT", "/api/users/carol", {"password": "c", "tags": ""})
    api.ok("PUT", "/api/vhost-limits/app/max-queues", {"value": 7})
    api.ok("PUT", "/api/user-limits/carol/max-channels", {"value": 3})
    exported = api.get("/api/definitions")
    assert next(u for u in exported["users"] if u["name"] == "carol")["limits"] == {"max-channels": 3}
    assert next(v for v in exported["vhosts"] if v["name"] == "app")["limits"] == [["max-queues", 7]]
    assert exported["parameters"] == [{"vhost": "app", "component": "vhost-limits", "name": "limits",
                                       "value": {"max-queues": 7}}]
    fresh = ThreadedServer(make_config(http_port=0, data_dir=str(tmp_path / "fresh"))).start()
    try:
        other = Client(fresh.http_port)
        assert other.request("POST", "/api/definitions", exported)[0] == 204
        assert other.get("/api/vhost-limits") == [{"vhost": "app", "value": {"max-queues": 7}}]
        assert other.get("/api/user-limits") == [{"user": "carol", "value": {"max-channels": 3}}]
        # a RabbitMQ file carries vhost limits only as a parameter
        parameter = {"vhost": "app", "component": "vhost-limits", "name": "limits", "value": {"max-connections": 2}}
        assert other.request("POST", "/api/definitions", {"parameters": [parameter]})[0] == 204
        assert other.get("/api/vhost-limits/app") == [{"vhost": "app", "value": {"max-connections": 2}}]
    finally:
        fresh.stop()


# --- channel_max, frame_max, max_message_size (configuration) ---------------------------------------------


def test_oversized_message_closes_only_its_channel(make_config: Callable[..., Config]) -> None:
    server = ThreadedServer(make_config(max_message_size=1000, frame_max=4096)).start()
    try:
        other = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        assert conn._impl.params.frame_max == 4096  # negotiated down to the broker's frame_max
        ch, sibling = conn.channel(), conn.channel()
        sibling.queue_declare("sized")
        ch.confirm_delivery()
        ch.basic_publish("", "sized", b"x" * 1000)  # exactly the limit is accepted
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("", "sized", b"y" * 9000)  # three body frames, all skipped
        assert (info.value.reply_code, info.value.reply_text) == (
            406, "PRECONDITION_FAILED - message size 9000 is larger than configured max size 1000")
        assert conn.is_open and sibling.is_open
        sibling.basic_publish("", "sized", b"after")
        method, _, body = sibling.basic_get("sized", auto_ack=True)
        assert body == b"x" * 1000 and method.message_count == 1
        assert sibling.basic_get("sized", auto_ack=True)[2] == b"after"
        assert other.channel().queue_declare("sized", passive=True).method.message_count == 0
        other.close()
        conn.close()
    finally:
        server.stop()


def test_channel_max_is_negotiated_and_enforced(make_config: Callable[..., Config]) -> None:
    from rawamqp import RawClient

    server = ThreadedServer(make_config(channel_max=2)).start()
    try:
        client = RawClient(server.port)
        try:
            client.handshake()
            client.open_channel(1)
            client.open_channel(7)  # the limit is on how many are open, not on their numbers
            client.send_method(3, "channel.open", "")
            reply = client.recv_method()
            assert reply is not None and reply[1] == "connection.close", reply
            assert reply[2][:2] == (530, "NOT_ALLOWED - number of channels opened (2) has reached the negotiated "
                                         "channel_max (2)")
        finally:
            client.close()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        assert conn._impl.params.channel_max == 2
        conn.close()
    finally:
        server.stop()
