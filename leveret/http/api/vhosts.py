"""Handlers of ``/api/vhosts``: list, show, create (with RabbitMQ's ``tracing`` switch) and delete vhosts."""

from __future__ import annotations

from aiohttp import web

from leveret.core.tracing import set_tracing
from leveret.management.context import Management, may_see_all
from leveret.management.validation import bad_request, parse_bool
from leveret.management.views import vhost_info

from ..paging import paged
from .call import Call, reply


async def list_vhosts(api: Management, call: Call) -> web.Response:
    visible = [v for v in api.broker.vhosts.values()
               if call.user.tags and (may_see_all(call.user) or v.name in call.user.vhosts)]
    return paged(call.request, [vhost_info(v) for v in sorted(visible, key=lambda v: v.name)], reply)


async def get_vhost(api: Management, call: Call) -> web.Response:
    return reply(vhost_info(api.vhost(call.params["vhost"])))


async def put_vhost(api: Management, call: Call) -> web.Response:
    body = await call.body()
    name = call.params["vhost"]
    if not name:
        raise bad_request("a vhost needs a name")
    broker = api.broker
    created = name not in broker.vhosts
    vhost = broker.add_vhost(name)
    if created:  # as RabbitMQ's API: the user who made the vhost may use it
        broker.set_permission(call.user.name, name)
    if "tracing" in body:  # RabbitMQ's way to switch the firehose from the API
        set_tracing(vhost, parse_bool(body, "tracing", False))
    return reply(None, 201 if created else 204)


async def delete_vhost(api: Management, call: Call) -> web.Response:
    api.broker.delete_vhost(call.params["vhost"])
    return reply(None, 204)
