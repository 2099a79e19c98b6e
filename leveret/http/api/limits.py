"""Handlers of RabbitMQ's ``/api/vhost-limits`` and ``/api/user-limits`` (max-connections, max-queues,
max-channels): the core checks the names and values."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from leveret.management.context import Management
from leveret.management.validation import bad_request

from .call import Call, reply


async def list_vhost_limits(api: Management, call: Call) -> web.Response:
    name = call.params.get("vhost")
    vhosts = [api.vhost(name)] if name is not None else sorted(api.broker.vhosts.values(), key=lambda v: v.name)
    return reply([{"vhost": v.name, "value": dict(v.limits)} for v in vhosts if v.limits])


async def limit_value(call: Call) -> Any:
    """The ``value`` of a limit PUT's body."""
    body = await call.body()
    if "value" not in body:
        raise bad_request("the body must be {\"value\": <integer>}")
    return body["value"]


async def put_vhost_limit(api: Management, call: Call) -> web.Response:
    value = await limit_value(call)
    api.broker.set_vhost_limits(call.params["vhost"], {call.params["name"]: value}, replace=False)
    return reply(None, 204)


async def delete_vhost_limit(api: Management, call: Call) -> web.Response:
    api.broker.clear_vhost_limits(call.params["vhost"], call.params["name"])
    return reply(None, 204)


async def list_user_limits(api: Management, call: Call) -> web.Response:
    name = call.params.get("user")
    users = [api.user(name)] if name is not None else list(api.broker.users.values())
    return reply([{"user": u.name, "value": dict(u.limits)} for u in users if u.limits])


async def put_user_limit(api: Management, call: Call) -> web.Response:
    value = await limit_value(call)
    api.broker.set_user_limits(call.params["user"], {call.params["name"]: value})
    return reply(None, 204)


async def delete_user_limit(api: Management, call: Call) -> web.Response:
    api.broker.clear_user_limits(call.params["user"], call.params["name"])
    return reply(None, 204)
