"""Handlers of ``/api/exchanges``: list, show, declare and delete exchanges (``amq.default`` in a URL is the
default exchange). Publishing through an exchange is in messages.py."""

from __future__ import annotations

from aiohttp import web

from leveret.management.context import Management
from leveret.management.validation import bad_request, exchange_name, parse_bool, parse_dict
from leveret.management.views import exchange_info

from ..paging import paged
from .call import Call, reply


async def list_exchanges(api: Management, call: Call) -> web.Response:
    return paged(call.request, [exchange_info(v, e) for v in call.visible_vhosts(api) for e in v.exchanges.values()],
                 reply)


async def get_exchange(api: Management, call: Call) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    return reply(exchange_info(vhost, vhost.exchange(exchange_name(call.params["name"]))))


async def put_exchange(api: Management, call: Call) -> web.Response:
    body = await call.body()
    vhost = api.vhost(call.params["vhost"])
    name = exchange_name(call.params["name"])
    type_name = body.get("type")
    if not isinstance(type_name, str):
        raise bad_request("'type' is required")
    created = name not in vhost.exchanges
    vhost.declare_exchange(name, type_name, durable=parse_bool(body, "durable", True),
                           auto_delete=parse_bool(body, "auto_delete", False),
                           internal=parse_bool(body, "internal", False), arguments=parse_dict(body, "arguments"),
                           access=call.access(vhost))
    return reply(None, 201 if created else 204)


async def delete_exchange(api: Management, call: Call) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    name = exchange_name(call.params["name"])
    if name:
        vhost.exchange(name)  # 404 for a missing exchange
    vhost.delete_exchange(name, if_unused=call.query_flag("if-unused"), access=call.access(vhost))
    return reply(None, 204)
