"""The cluster view (several nodes on one PostgreSQL store, docs/cluster.md): what each node serves, published with
its heartbeat, and the management API's lists and totals over every node.

:func:`summary` is this node's, made on the broker's thread at each heartbeat (Durability.watch_summary) and written
to its row of the store's ``nodes`` table; the other nodes read it with the list of nodes (NodeRecord.summary), so
what they show of this node is at most one heartbeat (``node_lease / 3``) old. Its size is bounded: at most
``QUEUES_LISTED`` queues and ``CONNECTIONS_LISTED`` connections are listed (the totals count them all).

Its shape (JSON)::

    {"queues": [[vhost, name, messages_ready, messages_unacknowledged, consumers, durable, auto_delete,
                 exclusive, arguments], ...],     # the queues this node serves
     "connections": [connection_info, ...],      # views.connection_info without rates
     "totals": {"queues": n, "connections": n, "channels": n, "consumers": n, "messages_ready": n,
                "messages_unacknowledged": n}}
"""

from __future__ import annotations

from typing import Any

from leveret.core.broker import Broker, VHost
from leveret.core.lifecycle import queue_type

from .context import Management
from .views import connection_info

QUEUES_LISTED = 5000  # queues listed per node in its summary (the totals count every queue)
CONNECTIONS_LISTED = 100  # connections listed per node in its summary (the totals count every connection)


def summary(api: Management) -> dict[str, Any]:
    """What this node serves now: its queues' counts, its connections, its totals (module docstring)."""
    broker = api.broker
    served = [q for v in broker.vhosts.values() for q in v.queues.values() if q.served_by is None]
    sessions = api.open_sessions()
    address = api.amqp_address()
    queues = [[q.vhost.name, q.name, q.message_count, q.unacked_count, q.consumer_count, q.durable, q.auto_delete,
               q.exclusive, q.arguments] for q in served[:QUEUES_LISTED]]
    connections = [connection_info(s, address, api.node) for s in sessions[:CONNECTIONS_LISTED]]
    totals = {"queues": len(served), "connections": len(sessions),
              "channels": sum(len(s.channels) for s in sessions),
              "consumers": sum(q.consumer_count for q in served),
              "messages_ready": sum(q.message_count for q in served),
              "messages_unacknowledged": sum(q.unacked_count for q in served)}
    return {"queues": queues, "connections": connections, "totals": totals}


def others(broker: Broker) -> dict[str, dict[str, Any]]:
    """The summaries of the other running nodes of this node's cluster, by node name (none without a cluster)."""
    records = broker.durability.nodes() if broker.durability is not None else None
    return {r.name: r.summary for r in records or () if r.running and r.name != broker.node_name and r.summary}


def _figures(entry: list[Any], node: str) -> dict[str, Any]:
    ready, unacked, consumers = entry[2], entry[3], entry[4]
    return {"messages": ready + unacked, "messages_ready": ready, "messages_unacknowledged": unacked,
            "consumers": consumers, "node": node}


def queue_figures(summaries: dict[str, dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(node, vhost, name) -> the counts that node published for a queue it serves."""
    return {(node, e[0], e[1]): _figures(e, node) for node, found in summaries.items()
            for e in found.get("queues", ())}


def with_owner_figures(info: dict[str, Any], figures: dict[tuple[str, str, str], dict[str, Any]]) -> dict[str, Any]:
    """A queue as :func:`views.queue_info` shows it, with its owner's counts when another node serves it."""
    found = figures.get((info["node"], info["vhost"], info["name"]))
    return {**info, **found} if found is not None else info


def remote_queues(summaries: dict[str, dict[str, Any]], vhosts: list[VHost]) -> list[dict[str, Any]]:
    """The queues of other nodes that this node does not know (those not in the store: non-durable, exclusive),
    in ``vhosts``, as the API lists queues (without rates and policies)."""
    names = {v.name: v for v in vhosts}
    found = []
    for node, published in summaries.items():
        for e in published.get("queues", ()):
            vhost = names.get(e[0])
            if vhost is None or e[1] in vhost.queues:
                continue
            arguments = e[8] if isinstance(e[8], dict) else {}
            found.append({"name": e[1], "vhost": e[0], "durable": e[5], "auto_delete": e[6], "exclusive": e[7],
                          "arguments": arguments, "policy": None, "effective_policy_definition": {},
                          "message_bytes_ready": None, "state": "running", "type": queue_type(arguments),
                          "exclusive_consumer_tag": None, **_figures(e, node)})
    return found


def remote_connections(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The connections the other nodes published (each with its ``node``)."""
    return [c for published in summaries.values() for c in published.get("connections", ())
            if isinstance(c, dict)]


def totals(summaries: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The other nodes' totals, summed."""
    summed: dict[str, int] = {}
    for published in summaries.values():
        for key, value in (published.get("totals") or {}).items():
            if isinstance(value, int):
                summed[key] = summed.get(key, 0) + value
    return summed
