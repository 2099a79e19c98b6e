"""Handlers of client connections, channels and consumers: listing them, and closing a connection (RabbitMQ's
force-close). Read only otherwise."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from leveret.core import errors
from leveret.core.broker import Session
from leveret.management import cluster
from leveret.management.context import Management, may_see_all
from leveret.management.validation import not_authorised
from leveret.management.views import channel_infos, connection_info, consumer_infos

from ..paging import paged
from .call import Call, reply

log = logging.getLogger("leveret.http")

CLOSE_REASON = "Closed via management plugin"  # RabbitMQ's default reason of DELETE /api/connections/{name}


def sees(call: Call, session: Session) -> bool:
    """RabbitMQ's rule for connections and channels: administrators and monitoring users see all of them,
    other management users their own only."""
    if may_see_all(call.user):
        return True
    return session.user is not None and session.user.name == call.user.name


def visible_sessions(api: Management, call: Call) -> list[Session]:
    return [s for s in api.open_sessions(call.params.get("vhost")) if sees(call, s)]


def remote_connections(api: Management, call: Call) -> list[dict[str, Any]]:
    """Several nodes (docs/cluster.md): the connections other nodes published with their last heartbeat, those
    ``call``'s user may see (of the vhost in the path, when there is one)."""
    vhost = call.params.get("vhost")
    if vhost is not None:
        api.vhost(vhost)
    return [c for c in cluster.remote_connections(cluster.others(api.broker))
            if (may_see_all(call.user) or c.get("user") == call.user.name)
            and (vhost is None or c.get("vhost") == vhost)]


def remote_connection(api: Management, call: Call) -> dict[str, Any] | None:
    for info in remote_connections(api, call):
        if info.get("name") == call.params["name"]:
            return info
    return None


async def list_connections(api: Management, call: Call) -> web.Response:
    address = api.amqp_address()
    infos = [connection_info(s, address, api.node, api.rates) for s in visible_sessions(api, call)]
    return paged(call.request, infos + remote_connections(api, call), reply)


def _find(api: Management, call: Call) -> Session | dict[str, Any]:
    """The named connection: this node's session, or its view when another node of the cluster has it; NotFound
    when neither does."""
    try:
        return api.find_connection(call.params["name"])
    except errors.NotFound:
        found = remote_connection(api, call)
        if found is None:
            raise
        return found


async def get_connection(api: Management, call: Call) -> web.Response:
    session = _find(api, call)
    if isinstance(session, dict):
        return reply(session)
    if not sees(call, session):
        raise not_authorised("User not authorised to access object")
    return reply(connection_info(session, api.amqp_address(), api.node, api.rates))


async def delete_connection(api: Management, call: Call) -> web.Response:
    """RabbitMQ's force-close: the client gets 320 CONNECTION_FORCED with the ``X-Reason`` header's text.
    An administrator may close any connection, other management users their own only (as RabbitMQ). A connection
    of another node of a cluster is not closed from here (405 naming the node: close it through that node's API)."""
    session = _find(api, call)
    if isinstance(session, dict):
        found = session
        return reply({"error": "Method Not Allowed",
                      "reason": f"connection '{call.params['name']}' is on node '{found.get('node')}': close it "
                                "through that node's management API (closing a connection of another node is not "
                                "relayed yet)"}, 405)
    if "administrator" not in call.user.tags and (session.user is None or session.user.name != call.user.name):
        raise not_authorised("User not authorised to access object")
    reason = call.request.headers.get("X-Reason") or CLOSE_REASON
    reason = reason.encode(errors="surrogateescape").decode(errors="replace")  # bytes that were not UTF-8
    log.info("closing connection '%s' on request of user '%s': %s", call.params["name"], call.user.name, reason)
    session.force_close(reason)
    return reply(None, 204)


async def list_channels(api: Management, call: Call) -> web.Response:
    address = api.amqp_address()
    return paged(call.request, [channel for session in visible_sessions(api, call)
                                for channel in channel_infos(connection_info(session, address, api.node), session,
                                                             api.node)], reply)


async def list_consumers(api: Management, call: Call) -> web.Response:
    address = api.amqp_address()
    return reply([c for vhost in call.visible_vhosts(api) for c in consumer_infos(vhost, address, api.node)])
