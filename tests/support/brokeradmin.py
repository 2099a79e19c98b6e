"""Managing users, permissions and limits the same way on both brokers, for differential security tests.

``LeveretAdmin`` calls the core on the server's loop; ``RabbitAdmin`` runs ``rabbitmqctl`` (the reference
RabbitMQ on 127.0.0.1:5672 started by ../shared/scripts/rabbitmq.sh; the tests run as a user that may use
its CLI). Names are unique per test run: RabbitMQ is shared, so every test creates its own vhost and users
and removes them afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingConnection

from leveret.node import ThreadedServer

PASSWORD = "secret-pw"


class LeveretAdmin:
    name = "leveret"

    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.port = server.port

    def _call(self, fn: Any, *args: Any) -> Any:
        return self.server.call(fn, *args)

    def add_vhost(self, vhost: str) -> None:
        self._call(self.server.broker.add_vhost, vhost)

    def delete_vhost(self, vhost: str) -> None:
        self._call(self.server.broker.delete_vhost, vhost)

    def add_user(self, user: str, password: str = PASSWORD) -> None:
        self._call(lambda: self.server.broker.add_user(user, password))

    def delete_user(self, user: str) -> None:
        self._call(self.server.broker.delete_user, user)

    def set_permissions(self, user: str, vhost: str, configure: str, write: str, read: str) -> None:
        self._call(self.server.broker.set_permission, user, vhost, configure, write, read)

    def clear_permissions(self, user: str, vhost: str) -> None:
        self._call(self.server.broker.clear_permission, user, vhost)

    def set_vhost_limits(self, vhost: str, limits: dict[str, int]) -> None:
        self._call(self.server.broker.set_vhost_limits, vhost, limits)

    def clear_vhost_limits(self, vhost: str) -> None:
        self._call(self.server.broker.clear_vhost_limits, vhost)

    def set_user_limits(self, user: str, limits: dict[str, int]) -> None:
        self._call(self.server.broker.set_user_limits, user, limits)

    def clear_user_limits(self, user: str) -> None:
        self._call(self.server.broker.clear_user_limits, user)


class RabbitAdmin:
    name = "rabbitmq"
    port = 5672

    _available: tuple[str | None] | None = None  # the answer, asked once per test process (a CLI run is ~0.5 s)

    @classmethod
    def available(cls) -> str | None:
        """None when rabbitmqctl can manage the reference broker, else why not."""
        if cls._available is None:
            cls._available = (cls._why_not(),)
        return cls._available[0]

    @staticmethod
    def _why_not() -> str | None:
        if shutil.which("rabbitmqctl") is None:
            return "rabbitmqctl is not installed"
        try:
            subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], check=True, capture_output=True, timeout=60)
        except (subprocess.SubprocessError, OSError) as exc:
            return f"rabbitmqctl cannot manage the reference RabbitMQ: {exc}"
        return None

    def ctl(self, *args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    def add_vhost(self, vhost: str) -> None:
        self.ctl("add_vhost", vhost)

    def delete_vhost(self, vhost: str) -> None:
        self.ctl("delete_vhost", vhost)

    def add_user(self, user: str, password: str = PASSWORD) -> None:
        self.ctl("add_user", user, password)

    def delete_user(self, user: str) -> None:
        self.ctl("delete_user", user)

    def set_permissions(self, user: str, vhost: str, configure: str, write: str, read: str) -> None:
        self.ctl("set_permissions", "-p", vhost, user, configure, write, read)

    def clear_permissions(self, user: str, vhost: str) -> None:
        self.ctl("clear_permissions", "-p", vhost, user)

    def set_vhost_limits(self, vhost: str, limits: dict[str, int]) -> None:
        self.ctl("set_vhost_limits", "-p", vhost, json.dumps(limits))

    def clear_vhost_limits(self, vhost: str) -> None:
        self.ctl("clear_vhost_limits", "-p", vhost)

    def set_user_limits(self, user: str, limits: dict[str, int]) -> None:
        self.ctl("set_user_limits", user, json.dumps(limits))

    def clear_user_limits(self, user: str) -> None:
        self.ctl("clear_user_limits", user, "all")


Admin = LeveretAdmin | RabbitAdmin


def rabbit_admin() -> RabbitAdmin:
    """A RabbitAdmin, or skip the test (with the reason) when RabbitMQ or its CLI is not usable."""
    from conftest import require_rabbitmq

    require_rabbitmq()
    reason = RabbitAdmin.available()
    if reason is not None:
        pytest.skip(reason)
    return RabbitAdmin()


def connect_as(port: int, vhost: str, user: str, password: str = PASSWORD) -> BlockingConnection:
    return BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, vhost,
                                                       pika.PlainCredentials(user, password),
                                                       connection_attempts=1, heartbeat=0))
