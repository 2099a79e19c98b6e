"""Handlers of ``/api/bindings``: list bindings, and make, show and delete one between an exchange and a queue
(``q``) or another exchange (``e``), named in URLs by RabbitMQ's properties key (views.properties_key)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from leveret.core import errors
from leveret.core.broker import VHost, strip_crlf
from leveret.management.context import Management
from leveret.management.validation import HTTPFailure, bad_request, exchange_name, parse_dict
from leveret.management.views import bindings_of, properties_key

from .call import Call, reply


async def list_bindings(api: Management, call: Call) -> web.Response:
    return reply([b for v in call.visible_vhosts(api) for b in bindings_of(v)])


def between(api: Management, call: Call, strip: bool = False) -> tuple[VHost, list[dict[str, Any]]]:
    """The vhost and the bindings between the path's source and destination (404 if either is missing).
    ``strip``: CR/LF removed from the names first (a new binding, as RabbitMQ's queue.bind)."""
    vhost = api.vhost(call.params["vhost"])
    kind = {"q": "queue", "e": "exchange"}.get(call.params["kind"])
    if kind is None:
        raise HTTPFailure(404, "Object Not Found", "Not Found")
    clean = strip_crlf if strip else str
    source = exchange_name(clean(call.params["source"]))
    vhost.exchange(source)
    destination = clean(call.params["destination"])
    if kind == "queue":
        vhost.queue(destination)
    else:
        vhost.exchange(destination)
    return vhost, [b for b in bindings_of(vhost) if b["source"] == source
                   and b["destination"] == destination and b["destination_type"] == kind]


async def list_bindings_between(api: Management, call: Call) -> web.Response:
    return reply(between(api, call)[1])


async def post_binding(api: Management, call: Call) -> web.Response:
    body = await call.body()
    vhost, _ = between(api, call, strip=True)
    routing_key = body.get("routing_key", "")
    if not isinstance(routing_key, str):
        raise bad_request("'routing_key' must be a string")
    arguments = parse_dict(body, "arguments")
    source, destination = exchange_name(call.params["source"]), call.params["destination"]
    if call.params["kind"] == "q":
        vhost.bind_queue(destination, source, routing_key, arguments, None, access=call.access(vhost))
    else:
        vhost.bind_exchange(destination, source, routing_key, arguments, access=call.access(vhost))
    response = reply(None, 201)
    response.headers["Location"] = properties_key(routing_key, arguments)
    return response


def find_binding(api: Management, call: Call) -> dict[str, Any]:
    _, found = between(api, call)
    props = call.params["props"]  # decoded once: the properties key itself (RabbitMQ's tools quote it)
    for binding in found:
        if binding["properties_key"] in (props, quote(props, safe="~")):
            return binding
    raise errors.NotFound("no binding with these properties")


async def get_binding(api: Management, call: Call) -> web.Response:
    return reply(find_binding(api, call))


async def delete_binding(api: Management, call: Call) -> web.Response:
    binding = find_binding(api, call)
    vhost = api.vhost(call.params["vhost"])
    if binding["destination_type"] == "queue":
        vhost.unbind_queue(binding["destination"], binding["source"], binding["routing_key"],
                           binding["arguments"], None, access=call.access(vhost))
    else:
        vhost.unbind_exchange(binding["destination"], binding["source"], binding["routing_key"],
                              binding["arguments"], access=call.access(vhost))
    return reply(None, 204)
