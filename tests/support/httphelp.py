"""A small client of the management HTTP API for tests (urllib, basic auth, JSON in and out)."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from typing import Any


class Client:
    def __init__(self, port: int, user: str = "guest", password: str = "guest") -> None:
        self.port = port
        self.user = user
        self.password = password

    def request(self, method: str, path: str, body: Any = None, *, auth: tuple[str, str] | bool | None = True,
                raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        if auth is True:
            auth = (self.user, self.password)
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", "Basic " + token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, text, received = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, text, received = exc.code, exc.read(), exc.headers
        headers = dict(received)
        json_body = (received.get("Content-Type") or "").startswith("application/json")  # any case (RabbitMQ's)
        value = json.loads(text) if text and json_body else text
        return status, value, headers

    def get(self, path: str, **kw: Any) -> Any:
        status, value, _ = self.request("GET", path, **kw)
        assert status == 200, (path, status, value)
        return value

    def ok(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200, 201, 204)) -> Any:
        status, value, _ = self.request(method, path, body)
        assert status in expect, (method, path, status, value)
        return value


RABBITMQ_HTTP_PORT = 15672
"""The reference RabbitMQ's management API (rabbitmq-plugins enable rabbitmq_management)."""


def rabbitmq_management() -> bool:
    """Whether the reference RabbitMQ's management API answers on 127.0.0.1:15672 (differential tests skip
    honestly without it)."""
    try:
        with socket.create_connection(("127.0.0.1", RABBITMQ_HTTP_PORT), timeout=1):
            pass
    except OSError:
        return False
    status, value, _ = Client(RABBITMQ_HTTP_PORT).request("GET", "/api/overview")
    return status == 200 and isinstance(value, dict) and value.get("product_name") == "RabbitMQ"
