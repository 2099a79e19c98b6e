"""The audit log: JSON lines in <data_dir>/audit.log (config audit_log) and on the leveret.audit logger."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from leveret.config import Config
from leveret.node import ThreadedServer

from httphelp import Client
from waiting import poll


def events(path: Path, wait_for: str | None = None) -> list[dict[str, Any]]:
    """The audit file's entries (waiting up to 5 s for an event named ``wait_for`` to appear)."""
    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return poll(read, lambda entries: wait_for is None or any(e["event"] == wait_for for e in entries), 5, 0.05)


def test_logins_and_refused_logins(make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="leveret.audit")
    config = make_config()
    server = ThreadedServer(config).start()
    path = Path(config.data_dir) / "audit.log"
    try:
        server.call(lambda: server.broker.add_user("nobody", "pw"))  # no permissions anywhere
        params = {"host": "127.0.0.1", "port": server.port, "connection_attempts": 1}
        pika.BlockingConnection(pika.ConnectionParameters(**params)).close()
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.ConnectionParameters(
                **params, credentials=pika.PlainCredentials("guest", "wrong")))
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
            pika.BlockingConnection(pika.ConnectionParameters(**params, credentials=pika.PlainCredentials("nobody",
                                                                                                         "pw")))
        entries = events(path, "login.refused")
    finally:
        server.stop()
    assert os.stat(path).st_mode & 0o777 == 0o600
    logins = [e for e in entries if e["event"] == "login"]
    assert len(logins) == 1 and logins[0]["user"] == "guest" and logins[0]["vhost"] == "/"
    assert logins[0]["peer"].startswith("127.0.0.1:") and logins[0]["protocol"] == "amqp"
    refused = [e for e in entries if e["event"] == "login.refused"]
    assert [(e["user"], e["reason"]) for e in refused] == [
        ("guest", "user 'guest' - invalid credentials"),
        ("nobody", "access to vhost '/' refused for user 'nobody'"),
    ]
    assert all(e["peer"].startswith("127.0.0.1:") and e["ts"].endswith("Z") for e in refused)
    # the default user made on the first start, by the broker itself
    first = next(e for e in entries if e["event"] == "user.created")
    assert (first["user"], first["actor"]) == ("guest", {"via": "internal"})
    assert logins[0]["actor"] == {"via": "amqp", "address": logins[0]["peer"]}
    assert any('"event": "login.refused"' in r.getMessage() for r in caplog.records if r.name == "leveret.audit")


def test_changes_over_http_name_the_user_and_address(make_config: Callable[..., Config]) -> None:
    config = make_config(http_port=0)
    server = ThreadedServer(config).start()
    path = Path(config.data_dir) / "audit.log"
    try:
        api = Client(server.http_port)
        api.ok("PUT", "/api/vhosts/app", {})
        api.ok("PUT", "/api/users/carol", {"password": "secret-carol", "tags": "management"})
        api.ok("PUT", "/api/users/carol", {"tags": "monitoring"})
        api.ok("PUT", "/api/permissions/app/carol", {"configure": "^c", "write": ".*", "read": ".*"})
        api.ok("PUT", "/api/policies/app/ttl", {"pattern": "^q", "definition": {"message-ttl": 5}})
        api.ok("PUT", "/api/vhost-limits/app/max-queues", {"value": 3})
        api.ok("PUT", "/api/user-limits/carol/max-channels", {"value": 3})
        api.ok("DELETE", "/api/policies/app/ttl")
        api.ok("DELETE", "/api/permissions/app/carol")
        api.ok("DELETE", "/api/users/carol")
        api.ok("DELETE", "/api/vhosts/app")
        assert Client(server.http_port, "guest", "nope").request("GET", "/api/overview")[0] == 401
        api.ok("POST", "/api/definitions", {"vhosts": [{"name": "imported"}]})
    finally:
        server.stop()
    entries = events(path)
    changes = [(e["event"], e.get("vhost"), e.get("user")) for e in entries
               if e["actor"].get("via") == "http" and e["event"] != "login.refused"]
    assert changes == [
        ("vhost.created", "app", None), ("permission.set", "app", "guest"),  # the creator's, as RabbitMQ's API
        ("user.created", None, "carol"), ("user.updated", None, "carol"),
        ("permission.set", "app", "carol"), ("policy.set", "app", None), ("vhost_limits.set", "app", None),
        ("user_limits.set", None, "carol"), ("policy.cleared", "app", None), ("permission.cleared", "app", "carol"),
        ("user.deleted", None, "carol"), ("vhost.deleted", "app", None), ("definitions.import", None, None),
    ]
    by_http = [e for e in entries if e["actor"].get("via") == "http" and e["event"] != "login.refused"]
    assert all(e["actor"] == {"via": "http", "user": "guest", "address": "127.0.0.1"} for e in by_http)
    updated = next(e for e in entries if e["event"] == "user.updated")
    assert updated["password_changed"] is False and updated["tags"] == ["monitoring"]
    assert next(e for e in entries if e["event"] == "permission.set" and e["user"] == "carol")["configure"] == "^c"
    imported = [e for e in entries if e["actor"].get("via") == "definitions"]
    assert [(e["event"], e["vhost"]) for e in imported] == [("vhost.created", "imported")]
    assert imported[0]["actor"]["user"] == "guest"
    refused = next(e for e in entries if e["event"] == "login.refused")
    assert refused["protocol"] == "http" and refused["peer"] == "127.0.0.1"
    assert "secret-carol" not in path.read_text() and "password_hash" not in path.read_text()


def test_changes_through_ctl_name_the_socket_peer(make_config: Callable[..., Config]) -> None:
    config = make_config()
    server = ThreadedServer(config).start()
    try:
        result = subprocess.run([sys.executable, "-m", "leveret", "ctl", "--data-dir", config.data_dir,
                                 "set-vhost-limits", '{"max-connections": 5}'], capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()
    entry = next(e for e in events(Path(config.data_dir) / "audit.log") if e["event"] == "vhost_limits.set")
    assert entry["vhost"] == "/" and entry["limits"] == {"max-connections": 5}
    assert entry["actor"]["via"] == "ctl" and entry["actor"]["uid"] == os.getuid() and entry["actor"]["pid"] > 0


def test_audit_log_setting(make_config: Callable[..., Config], tmp_path: Path) -> None:
    config = make_config(audit_log="")
    ThreadedServer(config).start().stop()
    assert not (Path(config.data_dir) / "audit.log").exists()
    elsewhere = tmp_path / "logs" / "leveret-audit.jsonl"
    config = make_config(audit_log=str(elsewhere), data_dir=str(tmp_path / "other"))
    ThreadedServer(config).start().stop()
    assert [e["event"] for e in events(elsewhere)] == ["vhost.created", "user.created", "permission.set"]
