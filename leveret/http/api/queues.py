"""Handlers of ``/api/queues``: list, show, declare, delete and purge queues, and a queue's bindings. Changes
are checked against the caller's permissions as AMQP's would be (see Management.access). Getting messages from
a queue is in messages.py."""

from __future__ import annotations

from aiohttp import web

from leveret.management import cluster
from leveret.management.context import Management
from leveret.management.validation import bad_request, parse_bool, parse_dict
from leveret.management.views import bindings_of, queue_info

from ..paging import paged
from .call import Call, reply


async def list_queues(api: Management, call: Call) -> web.Response:
    vhosts = call.visible_vhosts(api)
    queues = [q for v in vhosts for q in v.queues.values()]
    summaries = cluster.others(api.broker)
    if not summaries:  # one node (or no other node's summary yet): this node's queues
        return paged(call.request, queues, reply, lambda q: queue_info(q, api.node, api.rates))
    # several nodes (docs/cluster.md): the queues other nodes serve with their owners' counts, and the queues of
    # other nodes that this one does not know (non-durable ones)
    figures = cluster.queue_figures(summaries)
    infos = [cluster.with_owner_figures(queue_info(q, api.node, api.rates), figures) for q in queues]
    return paged(call.request, infos + cluster.remote_queues(summaries, vhosts), reply)


async def get_queue(api: Management, call: Call) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    summaries = cluster.others(api.broker)
    if call.params["name"] not in vhost.queues:  # another node's queue that this one does not know
        for info in cluster.remote_queues(summaries, [vhost]):
            if info["name"] == call.params["name"]:
                return reply(info)
    queue = vhost.queue(call.params["name"])
    info = queue_info(queue, api.node, api.rates)
    if summaries:
        info = cluster.with_owner_figures(info, cluster.queue_figures(summaries))
    return reply(api.history.annotate(call.request.query, ("queue", queue.vhost.name, queue.name), info))


async def queue_bindings(api: Management, call: Call) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    queue = vhost.queue(call.params["name"])
    return reply([b for b in bindings_of(vhost) if b["destination_type"] == "queue"
                  and b["destination"] == queue.name])


async def put_queue(api: Management, call: Call) -> web.Response:
    body = await call.body()
    vhost = api.vhost(call.params["vhost"])
    name = call.params["name"]
    if not name:
        raise bad_request("a queue needs a name")
    created = name not in vhost.queues  # looked up as given: 201 for a name with CR/LF, as RabbitMQ's API
    vhost.declare_queue(None, name, durable=parse_bool(body, "durable", True),
                        auto_delete=parse_bool(body, "auto_delete", False), arguments=parse_dict(body, "arguments"),
                        access=call.access(vhost))
    return reply(None, 201 if created else 204)


async def delete_queue(api: Management, call: Call) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    vhost.queue(call.params["name"])  # 404 for a missing queue, as RabbitMQ's API
    vhost.delete_queue(call.params["name"], None, if_unused=call.query_flag("if-unused"),
                       if_empty=call.query_flag("if-empty"), access=call.access(vhost))
    return reply(None, 204)


async def purge_queue(api: Management, call: Call) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    queue = vhost.queue(call.params["name"])  # 404 first, as RabbitMQ's API (resource_exists)
    call.access(vhost).read("queue", queue.name)
    await api.purge(queue)  # another node's queue: purged there (docs/cluster.md)
    return reply(None, 204)
