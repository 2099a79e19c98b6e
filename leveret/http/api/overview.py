"""Handlers of the broker as a whole: ``/api/overview``, ``whoami``, ``nodes``, the health checks
(``aliveness-test``, ``health/checks/alarms``) and the OpenAPI description."""

from __future__ import annotations

import time

from aiohttp import web

import leveret
from leveret import RABBITMQ_VERSION  # what tools that check the version are told (RabbitMQ's numbers)
from leveret.core import errors
from leveret.core.message import Message, build_address, build_header
from leveret.management import cluster
from leveret.management.context import Management
from leveret.management.views import node_info, nodes_info

from .. import openapi
from .. import web as web_page
from .call import Call, reply


async def overview(api: Management, call: Call) -> web.Response:
    sessions = api.sessions()
    broker = api.broker
    queues = [q for v in broker.vhosts.values() for q in v.queues.values()]
    ready = sum(q.message_count for q in queues)
    unacked = sum(q.unacked_count for q in queues)
    # several nodes (docs/cluster.md): with the other nodes' totals of their last heartbeat (the queues they serve
    # that this node knows are counted once)
    summaries = cluster.others(broker)
    more = cluster.totals(summaries)
    known = sum(1 for node, found in summaries.items() for e in found.get("queues", ())
                if isinstance(e, list) and e[0] in broker.vhosts and e[1] in broker.vhosts[e[0]].queues)
    ready += more.get("messages_ready", 0)
    unacked += more.get("messages_unacknowledged", 0)
    return reply(api.history.annotate(call.request.query, "overview", {
        "management_version": RABBITMQ_VERSION, "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Leveret", "product_version": leveret.__version__,
        "erlang_version": "n/a", "node": broker.node_name, "cluster_name": broker.node_name,
        "object_totals": {
            "queues": len(queues) + max(0, more.get("queues", 0) - known),
            "exchanges": sum(len(v.exchanges) for v in broker.vhosts.values()),
            "connections": len(sessions) + more.get("connections", 0),
            "channels": sum(len(s.channels) for s in sessions) + more.get("channels", 0),
            "consumers": sum(q.consumer_count for q in queues) + more.get("consumers", 0),
        },
        "queue_totals": {"messages": ready + unacked, "messages_ready": ready,
                         "messages_unacknowledged": unacked},
        "message_stats": api.rates.stats("overview", {"publish": sum(q.stats_published for q in queues),
                                                      "deliver_get": sum(q.stats_delivered for q in queues),
                                                      "ack": sum(q.stats_acked for q in queues),
                                                      "redeliver": sum(q.stats_redelivered for q in queues)}),
        "listeners": api.listeners(),
    }, "queue_totals"))


async def openapi_description(api: Management, call: Call) -> web.Response:
    return reply(openapi.build())


async def whoami(api: Management, call: Call) -> web.Response:
    return reply({"name": call.user.name, "tags": list(call.user.tags)})


def _nodes(api: Management) -> list[dict[str, object]]:
    """This node, and the other nodes of its cluster (docs/cluster.md)."""
    return nodes_info(api.broker, {**node_info(api.broker), **web_page.node_health()}, time.time())


async def list_nodes(api: Management, call: Call) -> web.Response:
    return reply(_nodes(api))


async def get_node(api: Management, call: Call) -> web.Response:
    for node in _nodes(api):
        if node["name"] == call.params["node"]:
            return reply(node)
    raise errors.NotFound(f"no node '{call.params['node']}'")


async def aliveness(api: Management, call: Call) -> web.Response:
    """RabbitMQ's aliveness test: declare ``aliveness-test``, publish a message to it and get it back."""
    vhost = api.vhost(call.params["vhost"])
    queue = vhost.declare_queue(None, "aliveness-test")
    body = b"test_message"
    msg = Message("", queue.name, build_address("", queue.name), build_header({}, len(body)), body)
    vhost.publish(vhost.exchange(""), msg)
    got = queue.get()
    if got is None:
        return reply({"status": "failed", "reason": "the test message did not come back"}, 503)
    queue.settle(got)
    return reply({"status": "ok"})


async def alarms(api: Management, call: Call) -> web.Response:
    memory = api.broker.memory
    if not memory.alarm:
        return reply({"status": "ok"})
    found = [{"node": api.node, "resource": resource}
             for resource, on in (("memory", memory.memory_alarm), ("disk", memory.disk_alarm)) if on]
    return reply({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                  "alarms": found}, 503)
