"""`leveret ctl` against a real Leveret: queues, exchanges, bindings, connections, users, permissions, vhosts,
definitions, tracing; tables by default, --json on listings, one-line errors with exit code 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.config import Config
from leveret.node import ThreadedServer

from amqphelp import connect


def start(make_config: Callable[..., Config]) -> ThreadedServer:
    # a short data dir: the control socket lives there and AF_UNIX paths are short
    return ThreadedServer(make_config(data_dir=tempfile.mkdtemp(prefix="lv-", dir="/tmp"), store="memory")).start()


@pytest.fixture
def server(make_config: Callable[..., Config]) -> Iterator[ThreadedServer]:
    srv = start(make_config)
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(srv.config.data_dir, ignore_errors=True)


class Ctl:
    def __init__(self, server: ThreadedServer) -> None:
        self.data_dir = server.config.data_dir

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "leveret", "ctl", "--data-dir", self.data_dir, *args],
                              capture_output=True, text=True, timeout=60, input=stdin)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str) -> str:
        """The one error line of a command that must fail with exit code 1."""
        result = self(*args)
        assert result.returncode == 1, result.stdout
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
        return result.stderr.strip()


@pytest.fixture
def ctl(server: ThreadedServer) -> Ctl:
    return Ctl(server)


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_queues_declare_list_purge_delete(server: ThreadedServer, ctl: Ctl) -> None:
    assert ctl.ok("declare-queue", "jobs", "--arguments", '{"x-max-length": 10}') == "queue 'jobs' declared\n"
    ctl.ok("declare-queue", "tmp", "--transient", "--auto-delete")
    connection = connect(server.port)
    ch = connection.channel()
    for i in range(3):
        ch.basic_publish("", "jobs", b"%d" % i)
    ch.queue_declare("jobs", passive=True, arguments={"x-max-length": 10})
    rows = table(ctl.ok("list-queues"))
    assert rows[0] == ["vhost", "name", "messages", "ready", "unacked", "consumers", "durable", "policy"]
    assert ["/", "jobs", "3", "3", "0", "0", "true"] in rows and ["/", "tmp", "0", "0", "0", "0", "false"] in rows
    listed = {q["name"]: q for q in ctl.json("list-queues", "--vhost", "/")}
    assert listed["jobs"]["arguments"] == {"x-max-length": 10} and listed["tmp"]["auto_delete"] is True
    assert ctl.ok("purge-queue", "jobs") == "queue 'jobs' purged (3 messages)\n"
    assert ch.queue_declare("jobs", passive=True).method.message_count == 0
    ch.basic_publish("", "jobs", b"x")
    assert "not empty" in ctl.fails("delete-queue", "jobs", "--if-empty")
    assert ctl.ok("delete-queue", "jobs") == "queue 'jobs' deleted (1 messages)\n"
    assert ctl.fails("delete-queue", "jobs") == "leveret: error: no queue 'jobs' in vhost '/'"
    assert ctl.fails("purge-queue", "nope", "--vhost", "nowhere") == "leveret: error: no vhost 'nowhere'"
    assert "inequivalent arg 'durable'" in ctl.fails("declare-queue", "tmp")
    connection.close()


def test_exchanges_and_bindings(server: ThreadedServer, ctl: Ctl) -> None:
    ctl.ok("declare-exchange", "orders", "topic")
    ctl.ok("declare-exchange", "audit", "fanout", "--internal")
    ctl.ok("declare-queue", "billing")
    assert ctl.ok("bind", "orders", "billing", "-k", "order.*") == \
        "bound queue 'billing' to exchange 'orders' with routing key 'order.*'\n"
    ctl.ok("bind", "orders", "audit", "--destination-type", "exchange", "-k", "#")
    exchanges = {e["name"]: e for e in ctl.json("list-exchanges")}
    assert exchanges["orders"]["type"] == "topic" and exchanges["audit"]["internal"] is True
    assert exchanges["amq.rabbitmq.trace"]["internal"] is True
    rows = table(ctl.ok("list-exchanges"))
    assert rows[0] == ["vhost", "name", "type", "durable", "auto_delete", "internal", "arguments"]
    assert ["/", "orders", "topic", "true", "false", "false", "{}"] in rows
    bindings = [(b["source"], b["destination"], b["destination_type"], b["routing_key"])
                for b in ctl.json("list-bindings")]
    assert ("orders", "billing", "queue", "order.*") in bindings and ("orders", "audit", "exchange", "#") in bindings
    assert ("", "billing", "queue", "billing") in bindings

    connection = connect(server.port)
    ch = connection.channel()
    ch.basic_publish("orders", "order.new", b"x")
    assert ch.basic_get("billing", auto_ack=True)[2] == b"x"
    ctl.ok("unbind", "orders", "billing", "-k", "order.*")
    ch.basic_publish("orders", "order.new", b"y")
    assert ch.queue_declare("billing", passive=True).method.message_count == 0
    connection.close()
    assert ctl.fails("unbind", "orders", "billing", "-k", "order.*") == (
        "leveret: error: no binding from exchange 'orders' to queue 'billing' with routing key 'order.*' in "
        "vhost '/'")
    assert ctl.fails("bind", "missing", "billing") == "leveret: error: no exchange 'missing' in vhost '/'"
    assert "in use" in ctl.fails("delete-exchange", "orders", "--if-unused")
    assert ctl.ok("delete-exchange", "orders") == "exchange 'orders' deleted\n"
    assert ctl.fails("delete-exchange", "orders") == "leveret: error: no exchange 'orders' in vhost '/'"
    assert "reserved" in ctl.fails("declare-exchange", "amq.mine", "direct")
    assert "unknown exchange type" in ctl.fails("declare-exchange", "x", "weird")
    bad = ctl("declare-queue", "q", "--arguments", "[1]")
    assert bad.returncode == 2 and "must be a JSON object" in bad.stderr


def test_connections_listing(server: ThreadedServer, ctl: Ctl) -> None:
    assert ctl.ok("list-connections") == "(none)\n"
    connection = connect(server.port)
    connection.channel()
    try:
        listed = ctl.json("list-connections")
        assert len(listed) == 1 and listed[0]["user"] == "guest" and listed[0]["vhost"] == "/"
        assert listed[0]["channels"] == 1 and listed[0]["name"].startswith("127.0.0.1:")
        rows = table(ctl.ok("list-connections"))
        assert rows[0] == ["name", "user", "vhost", "channels", "state"] and rows[1][-4:] == [
            "guest", "/", "1", "running"]
    finally:
        connection.close()


def test_close_connection(server: ThreadedServer, ctl: Ctl) -> None:
    doomed, other = connect(server.port), connect(server.port)
    closed: list[tuple[int, str]] = []
    try:
        doomed.channel()
        other_channel = other.channel()
        names = [c["name"] for c in ctl.json("list-connections")]
        local_port = doomed._impl._transport._sock.getsockname()[1]
        name = next(n for n in names if n.startswith(f"127.0.0.1:{local_port} "))
        assert ctl.ok("close-connection", name, "--reason", "maintenance") == f"connection '{name}' closed\n"
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as caught:
            doomed.process_data_events(time_limit=5)
            doomed.process_data_events(time_limit=5)
        closed.append((caught.value.reply_code, caught.value.reply_text))
        assert closed == [(320, "CONNECTION_FORCED - maintenance")]
        other_channel.queue_declare("", exclusive=True)  # the other connection is untouched
        assert ctl.fails("close-connection", name) == f"leveret: error: no connection '{name}'"
    finally:
        for connection in (doomed, other):
            if connection.is_open:
                connection.close()


def test_a_user_without_a_password_is_refused(ctl: Ctl) -> None:
    result = ctl("add-user", "dave", "--tags", "administrator", stdin="")  # cron, CI: no terminal, no input
    assert result.returncode == 1 and "no password given for 'dave'" in result.stderr
    assert [u["name"] for u in ctl.json("list-users")] == ["guest"]


def test_users_permissions_and_vhosts(server: ThreadedServer, ctl: Ctl) -> None:
    assert ctl.ok("add-user", "alice", "s3cret", "--tags", "management") == "user 'alice' added\n"
    assert ctl.ok("add-vhost", "shop") == "vhost 'shop' added\n"
    assert ctl.ok("set-permissions", "alice", "--vhost", "shop") == \
        "permissions of user 'alice' in vhost 'shop' set\n"
    users = {u["name"]: u["tags"] for u in ctl.json("list-users")}
    assert users == {"guest": ["administrator"], "alice": ["management"]}
    assert table(ctl.ok("list-users"))[1:] == [["guest", "administrator"], ["alice", "management"]]
    assert ctl.json("list-permissions", "--user", "alice") == [
        {"user": "alice", "vhost": "shop", "configure": ".*", "write": ".*", "read": ".*"}]
    assert {v["name"] for v in ctl.json("list-vhosts")} == {"/", "shop"}

    def login(password: str) -> bool:
        params = pika.ConnectionParameters("127.0.0.1", server.port, "shop",
                                           pika.PlainCredentials("alice", password), connection_attempts=1)
        try:
            pika.BlockingConnection(params).close()
            return True
        except pika.exceptions.AMQPError:
            return False

    assert login("s3cret")
    ctl.ok("change-password", "alice", stdin="n3w\n")  # no password argument: read from standard input
    assert not login("s3cret") and login("n3w")
    assert ctl.ok("set-user-tags", "alice", "monitoring", "policymaker") == \
        "tags of user 'alice' set to [monitoring, policymaker]\n"
    assert {u["name"]: u["tags"] for u in ctl.json("list-users")}["alice"] == ["monitoring", "policymaker"]
    assert login("n3w")  # tags do not touch the password
    ctl.ok("clear-permissions", "alice", "--vhost", "shop")
    assert not login("n3w")
    assert ctl.json("list-permissions", "--vhost", "shop") == []

    assert ctl.fails("delete-user", "bob") == "leveret: error: no user 'bob'"
    assert ctl.fails("change-password", "bob", "x") == "leveret: error: no user 'bob'"
    assert ctl.fails("set-user-tags", "bob") == "leveret: error: no user 'bob'"
    assert ctl.fails("set-permissions", "bob") == "leveret: error: no user 'bob'"
    assert ctl.fails("add-user", "alice", "x") == "leveret: error: user 'alice' already exists"
    assert "not a valid regular expression" in ctl.fails("set-permissions", "alice", "(")
    assert ctl.fails("add-vhost", "shop") == "leveret: error: vhost 'shop' already exists"
    assert ctl.ok("delete-user", "alice") == "user 'alice' deleted\n"
    assert ctl.ok("delete-vhost", "shop") == "vhost 'shop' deleted\n"
    assert ctl.fails("delete-vhost", "shop") == "leveret: error: no vhost 'shop'"
    assert ctl.fails("list-queues", "--vhost", "shop") == "leveret: error: no vhost 'shop'"


def test_definitions_export_and_import(server: ThreadedServer, ctl: Ctl, make_config: Callable[..., Config],
                                       tmp_path: Path) -> None:
    ctl.ok("add-vhost", "shop")
    ctl.ok("add-user", "carol", "pw", "--tags", "administrator")
    ctl.ok("set-permissions", "carol", "--vhost", "shop")
    ctl.ok("declare-exchange", "orders", "direct", "--vhost", "shop")
    ctl.ok("declare-queue", "billing", "--vhost", "shop", "--arguments", '{"x-message-ttl": 1000}')
    ctl.ok("bind", "orders", "billing", "-k", "new", "--vhost", "shop")
    ctl.ok("set-policy", "cap", "^billing$", '{"max-length": 5}', "--vhost", "shop")
    exported = json.loads(ctl.ok("export-definitions"))  # to standard output
    path = tmp_path / "defs.json"
    result = ctl("export-definitions", str(path))
    assert result.returncode == 0 and result.stdout == "" and json.loads(path.read_text()) == exported
    assert {"name": "billing", "vhost": "shop", "durable": True, "auto_delete": False, "type": "classic",
            "arguments": {"x-message-ttl": 1000}} in exported["queues"]

    other = start(make_config)
    try:
        other_ctl = Ctl(other)
        assert other_ctl.ok("import-definitions", str(path)).startswith("imported 2 vhosts, 2 users,")
        assert other_ctl.json("list-bindings", "--vhost", "shop")[-1]["routing_key"] == "new"
        assert other_ctl.json("list-policies")[0]["name"] == "cap"
        again = json.loads(other_ctl.ok("export-definitions"))
        for key in ("users", "vhosts", "permissions", "policies", "queues", "exchanges", "bindings"):
            assert sorted(map(json.dumps, again[key])) == sorted(map(json.dumps, exported[key])), key
        other_ctl.ok("import-definitions", "-", stdin=json.dumps({"queues": [
            {"name": "fresh", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}}]}))
        assert "fresh" in {q["name"] for q in other_ctl.json("list-queues")}
        assert other_ctl.fails("import-definitions", str(tmp_path / "missing.json")).startswith(
            "leveret: error: cannot read ")
        bad = tmp_path / "bad.json"
        bad.write_text('{"queues": [{"name": "q", "vhost": "nope"}]}')
        assert other_ctl.fails("import-definitions", str(bad)) == "leveret: error: no vhost 'nope'"
    finally:
        other.stop()
        shutil.rmtree(other.config.data_dir, ignore_errors=True)


def test_trace_on_and_off(server: ThreadedServer, ctl: Ctl) -> None:
    assert ctl.ok("trace-on") == "tracing now on in vhost '/'\n"
    assert ctl.ok("trace-on") == "tracing was already on in vhost '/'\n"
    assert ctl.json("list-vhosts")[0]["tracing"] is True
    assert json.loads(ctl.ok("--json", "status"))["tracing"] == ["/"]
    assert ctl.ok("trace-off") == "tracing now off in vhost '/'\n"
    assert ctl.fails("trace-on", "--vhost", "nope") == "leveret: error: no vhost 'nope'"


def test_every_listing_has_json(ctl: Ctl) -> None:
    from leveret.ctl import COMMANDS

    listings = [name for name, command in COMMANDS.items() if command.columns is not None]
    assert len(listings) == 10
    for name in listings:
        assert isinstance(ctl.json(name), list), name
