"""The forwarder's second transport: publishing through a broker's management API (RabbitMQ's, and Leveret's),
``POST /api/exchanges/{vhost}/{exchange}/publish`` with aiohttp, for networks where only HTTP(S) gets through.

A destination URL ``http[s]://user:password@host:port/[vhost]`` (the vhost as in an AMQP URL: none or ``/``
is "/"). The publish answers once the broker routed (and, for durable queues, stored) the message:

- 2xx ``{"routed": true}``: confirmed, the message is deleted from the outbox;
- 2xx ``{"routed": false}``: no queue was bound for it: parked when ``mandatory`` (as an AMQP return),
  deleted when not (the broker dropped it, as asked);
- 400 whose reason says the broker *rejected* it (a full queue with ``x-overflow: reject-publish``: RabbitMQ's
  "rejected Unable to publish message. Check queue limits."): a nack: sent again after a back-off;
- any other 4xx (no such exchange, access refused, invalid properties): parked with the reason, retried every
  ``unroutable_retry`` seconds, as a message that closes an AMQP channel;
- 401, 5xx, a refused or lost connection, a timeout: an outage: the message stays, the session restarts after
  a back-off. A publish that timed out may have been stored: sent again (at-least-once, as a lost confirm).

Messages are published one at a time, in id order (the API has no pipelining that keeps order): this transport
is for reachability, not throughput (bench/outbox_forward.py measures AMQP). Properties go as the API's JSON:
a header value of bytes is sent as its text when it is UTF-8, else the message is parked (JSON cannot carry it).
"""

from __future__ import annotations

import base64
import datetime
import decimal
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from leveret.outbox.message import OutboxMessage

DEFAULT_EXCHANGE = "amq.default"


class HttpOutage(Exception):
    """The API cannot take messages now (401, 5xx, connection error): back off and try again."""


class HttpNacked(Exception):
    """The broker refused the message for now (a full queue that rejects publishes)."""


class HttpTarget:
    """A management API to publish to, from ``http[s]://user:password@host:port/[vhost]``."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        self.vhost = unquote(path) if path else "/"
        port = f":{parts.port}" if parts.port else ""
        self.base = f"{parts.scheme}://{parts.hostname}{port}"
        user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        encode = getattr(aiohttp, "encode_basic_auth", None)  # aiohttp >= 3.14; BasicAuth before
        self.headers = {"Authorization": encode(user, password) if encode else
                        aiohttp.BasicAuth(user, password).encode()}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> HttpTarget:
        """A session, checked with ``GET /api/overview`` (a refused connection or bad credentials: HttpOutage)."""
        self.session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout)
        try:
            async with self.session.get(f"{self.base}/api/overview") as response:
                if response.status != 200:
                    raise HttpOutage(f"GET /api/overview: HTTP {response.status} {await _reason(response)}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.close()
            raise HttpOutage(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def publish(self, row: OutboxMessage, properties: dict[str, Any]) -> str | None:
        """Publish ``row``; None when it is settled (routed, or dropped as not mandatory), else why it is to be
        parked. Raises HttpNacked (send again later) or HttpOutage (back off)."""
        assert self.session is not None
        exchange = quote(row.exchange or DEFAULT_EXCHANGE, safe="")
        url = f"{self.base}/api/exchanges/{quote(self.vhost, safe='')}/{exchange}/publish"
        body = {"properties": properties, "routing_key": row.routing_key,
                "payload": base64.b64encode(row.body).decode(), "payload_encoding": "base64"}
        try:
            async with self.session.post(url, json=body) as response:
                status = response.status
                if 200 <= status < 300:
                    answer = await response.json(content_type=None)
                    if isinstance(answer, dict) and answer.get("routed") is True:
                        return None
                    if not row.mandatory:
                        return None  # the broker dropped it, as a non-mandatory publish asks
                    return "NO_ROUTE - the broker routed it to no queue"
                reason = await _reason(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HttpOutage(f"{type(exc).__name__}: {exc}") from exc
        if status == 401 or status == 408 or status == 429 or status >= 500:
            raise HttpOutage(f"HTTP {status} {reason}")
        if "rejected" in reason.lower():
            raise HttpNacked(f"HTTP {status} {reason}")
        return f"HTTP {status} {reason}"


async def _reason(response: aiohttp.ClientResponse) -> str:
    try:
        answer = await response.json(content_type=None)
    except Exception:
        return (await response.text())[:200]
    if isinstance(answer, dict):
        return str(answer.get("reason") or answer.get("error") or answer)[:500]
    return str(answer)[:500]


_NAMES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
          "expiration", "message_id", "user_id", "app_id", "cluster_id")


def json_properties(props: Any) -> dict[str, Any]:
    """pamqp properties -> the management API's JSON properties. ValueError when a value cannot be JSON."""
    out: dict[str, Any] = {}
    for name in _NAMES:
        value = getattr(props, name, None)
        if value is not None:
            out[name] = value
    if props.message_type is not None:
        out["type"] = props.message_type
    if props.timestamp is not None:
        stamp = props.timestamp
        out["timestamp"] = int(stamp.timestamp()) if isinstance(stamp, datetime.datetime) else int(stamp)
    if props.headers:
        out["headers"] = _json(props.headers)
    return out


def _json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            raise ValueError("a header holds bytes that are not UTF-8: the HTTP API's JSON cannot carry them") \
                from None
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value
