"""One request as the handlers see it (:class:`Call`: the user, the path parameters, the JSON body) and the
one way they answer (:func:`reply`: JSON, or 204 for no body)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from leveret.amqp.codec import RawField
from leveret.core.access import Access
from leveret.core.broker import User, VHost
from leveret.management.context import Management
from leveret.management.validation import HTTPFailure, bad_request


@dataclass
class Call:
    """One request as the handlers see it."""

    request: web.Request
    user: User
    params: dict[str, str]

    async def body(self) -> dict[str, Any]:
        raw = await self.request.read()
        if not raw.strip():
            return {}
        if self.request.content_type != "application/json":
            # as RabbitMQ's API (415); and a cross-site <form> (text/plain, no CORS check) cannot make changes
            raise HTTPFailure(415, "unsupported_media_type", "the request body must be application/json")
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"request body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise bad_request("request body must be a JSON object")
        return value

    def access(self, vhost: VHost) -> Access:
        """The calling user's permissions in ``vhost``: the API's changes to queues, exchanges and bindings, its
        publish and get are checked as the same AMQP operations would be (RabbitMQ's management plugin runs
        them on an AMQP channel as that user), for administrators too."""
        return Access(self.user, vhost.name)

    def visible_vhosts(self, api: Management) -> list[VHost]:
        """The path's vhost (404 if missing), or every vhost the caller may see."""
        return api.visible_vhosts(self.user, self.params.get("vhost"))

    def query_flag(self, name: str) -> bool:
        return self.request.query.get(name, "").lower() in ("true", "1")


def reply(value: Any = None, status: int = 200) -> web.Response:
    """``value`` as JSON with ``status``; no value: an empty answer (204 unless another status is given)."""
    if value is None:
        return web.Response(status=status if status != 200 else 204)
    return web.Response(status=status, text=json.dumps(value, default=_json_default), content_type="application/json")


def _json_default(value: Any) -> Any:
    if isinstance(value, RawField):
        return value.plain
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
