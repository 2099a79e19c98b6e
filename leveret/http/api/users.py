"""Handlers of ``/api/users`` and ``/api/permissions``: users (password or RabbitMQ sha256 hash, tags) and their
configure/write/read patterns per vhost. Administrators only (the route table says so)."""

from __future__ import annotations

from aiohttp import web

from leveret.core import errors
from leveret.management.context import Management
from leveret.management.validation import bad_request, parse_tags, password_hash_of, permission_patterns
from leveret.management.views import permission_info, user_info

from .call import Call, reply


async def list_users(api: Management, call: Call) -> web.Response:
    return reply([user_info(u) for u in api.broker.users.values()])


async def get_user(api: Management, call: Call) -> web.Response:
    return reply(user_info(api.user(call.params["user"])))


async def put_user(api: Management, call: Call) -> web.Response:
    body = await call.body()
    name = call.params["user"]
    if not name:
        raise bad_request("a user needs a name")
    password_hash = password_hash_of(body, api.broker.users.get(name))
    _, created = api.broker.put_user(name, password_hash, parse_tags(body.get("tags")))
    return reply(None, 201 if created else 204)


async def delete_user(api: Management, call: Call) -> web.Response:
    api.broker.delete_user(call.params["user"])
    return reply(None, 204)


async def user_permissions(api: Management, call: Call) -> web.Response:
    user = api.user(call.params["user"])
    return reply([permission_info(user, v) for v in sorted(user.vhosts)])


async def vhost_permissions(api: Management, call: Call) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    return reply([permission_info(u, vhost.name) for u in api.broker.users.values() if vhost.name in u.vhosts])


async def list_permissions(api: Management, call: Call) -> web.Response:
    return reply([permission_info(u, v) for u in api.broker.users.values() for v in sorted(u.vhosts)])


async def get_permission(api: Management, call: Call) -> web.Response:
    user = api.user(call.params["user"])
    vhost = api.vhost(call.params["vhost"])
    if vhost.name not in user.vhosts:
        raise errors.NotFound(f"no permissions for user '{user.name}' in vhost '{vhost.name}'")
    return reply(permission_info(user, vhost.name))


async def put_permission(api: Management, call: Call) -> web.Response:
    body = await call.body()
    created = api.broker.set_permission(call.params["user"], call.params["vhost"], *permission_patterns(body))
    return reply(None, 201 if created else 204)


async def delete_permission(api: Management, call: Call) -> web.Response:
    api.broker.clear_permission(call.params["user"], call.params["vhost"])
    return reply(None, 204)
