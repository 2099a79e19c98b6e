"""The JSON shapes of the management API, as RabbitMQ's management plugin writes them: one function per kind of
object (queue, exchange, binding, vhost, user, permission, policy, node, connection, channel, consumer).

Plain functions of the core's objects: the HTTP handlers, the definitions export and the control socket
(``leveret ctl``) all list objects through these, so the three show the same records.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any
from urllib.parse import quote

from leveret.core import errors
from leveret.core.broker import Broker, Session, User, VHost, process_rss
from leveret.core.exchanges import Exchange
from leveret.core.lifecycle import queue_type
from leveret.core.policies import Policy
from leveret.core.queue import Queue
from leveret.core.storage import NodeRecord

from .rates import Rates
from .validation import HASHING_ALGORITHM


def queue_info(queue: Queue, node: str, rates: Rates) -> dict[str, Any]:
    """A queue, with its message rates (``rates`` samples its counters) on ``node`` (several nodes on one store: the
    node that serves it, docs/cluster.md)."""
    ready, unacked = queue.message_count, queue.unacked_count
    counters = {"publish": queue.stats_published, "deliver_get": queue.stats_delivered, "ack": queue.stats_acked,
                "redeliver": queue.stats_redelivered}
    if queue.dedup is not None:  # x-message-deduplication: duplicates dropped (LavinMQ's "dedup")
        counters["dedup"] = queue.dedup.duplicates
    return {
        "name": queue.name, "vhost": queue.vhost.name, "durable": queue.durable,
        "auto_delete": queue.auto_delete, "exclusive": queue.exclusive, "arguments": queue.arguments,
        "policy": queue.policy, "effective_policy_definition": _policy_definition(queue.vhost, queue.policy),
        "messages": ready + unacked, "messages_ready": ready, "messages_unacknowledged": unacked,
        "message_bytes_ready": queue.ready_bytes, "consumers": queue.consumer_count,
        "state": "running", "type": queue_type(queue.arguments), "node": queue.served_by or node,
        "exclusive_consumer_tag": None,
        "message_stats": rates.stats(("queue", queue.vhost.name, queue.name), counters),
    }


def _policy_definition(vhost: VHost, name: str | None) -> dict[str, Any]:
    policy = vhost.policies.get(name) if name else None
    return dict(policy.definition) if policy is not None else {}


def exchange_info(vhost: VHost, exchange: Exchange) -> dict[str, Any]:
    info = {"name": exchange.name, "vhost": vhost.name, "type": exchange.type_name,
            "durable": exchange.durable, "auto_delete": exchange.auto_delete, "internal": exchange.internal,
            "arguments": exchange.arguments, "user_who_performed_action": "rmq-internal"}
    if exchange.dedup is not None:  # x-message-deduplication: duplicates dropped (LavinMQ's "dedup")
        info["message_stats"] = {"dedup": exchange.dedup.duplicates}
    return info


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's "props" key of a binding in URLs: ``~`` alone for no key and no arguments, the quoted
    routing key, and ``~`` plus a hash of the arguments when there are some."""
    if not routing_key and not arguments:
        return "~"
    key = quote(routing_key, safe="")
    if arguments:
        digest = hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode()).digest()
        key += "~" + base64.urlsafe_b64encode(digest[:12]).decode().rstrip("=")
    return key


def binding_info(vhost: VHost, source: str, destination: Any, routing_key: str,
                 arguments: dict[str, Any]) -> dict[str, Any]:
    kind = "queue" if isinstance(destination, Queue) else "exchange"
    return {"source": source, "vhost": vhost.name, "destination": destination.name, "destination_type": kind,
            "routing_key": routing_key, "arguments": arguments,
            "properties_key": properties_key(routing_key, arguments)}


def bindings_of(vhost: VHost, with_default: bool = True) -> list[dict[str, Any]]:
    """Every binding in ``vhost``; ``with_default``: with the implicit ones of the default exchange."""
    found = []
    if with_default:
        found = [binding_info(vhost, "", q, q.name, {}) for q in vhost.queues.values()]
    for exchange in vhost.exchanges.values():
        if exchange.name:
            for b in exchange.bindings():
                found.append(binding_info(vhost, exchange.name, b.destination, b.routing_key, b.table()))
    return found


def vhost_info(vhost: VHost) -> dict[str, Any]:
    ready = sum(q.message_count for q in vhost.queues.values())
    unacked = sum(q.unacked_count for q in vhost.queues.values())
    return {"name": vhost.name, "description": "", "tags": [], "tracing": vhost.tracer is not None,
            "messages": ready + unacked,
            "messages_ready": ready, "messages_unacknowledged": unacked}


def user_info(user: User) -> dict[str, Any]:
    return {"name": user.name, "password_hash": user.password_hash, "hashing_algorithm": HASHING_ALGORITHM,
            "tags": list(user.tags), "limits": dict(user.limits)}


def permission_info(user: User, vhost: str) -> dict[str, Any]:
    """``user``'s permissions in ``vhost`` (which must be one of ``user.vhosts``)."""
    configure, write, read = user.permissions[vhost].patterns()
    return {"user": user.name, "vhost": vhost, "configure": configure, "write": write, "read": read}


def policy_info(policy: Policy) -> dict[str, Any]:
    return {"vhost": policy.vhost, "name": policy.name, "pattern": policy.pattern,
            "apply-to": policy.apply_to, "definition": policy.definition, "priority": policy.priority}


def node_info(broker: Broker) -> dict[str, Any]:
    memory = broker.memory
    return {"name": broker.node_name, "type": "disc", "running": True, "mem_used": process_rss(),
            "mem_limit": memory.high, "mem_alarm": memory.memory_alarm, "disk_free_alarm": memory.disk_alarm,
            "partitions": [], "os_pid": str(os.getpid()), "being_drained": False}


def cluster_node_info(record: NodeRecord, now: float) -> dict[str, Any]:
    """A node of the cluster as the store's ``nodes`` table knows it (docs/cluster.md); ``now``: the time in seconds
    since the epoch."""
    uptime = int(max(0.0, now - record.started_at) * 1000) if record.running else 0
    info = {"name": record.name, "type": "disc", "running": record.running, "os_pid": str(record.pid),
            "host": record.host, "started_at": record.started_at, "seen_at": record.seen_at, "uptime": uptime,
            "partitions": [], "being_drained": False}
    if record.amqp:  # where it listens for AMQP, once it recorded it
        info["amqp"] = record.amqp
    return info


def nodes_info(broker: Broker, own: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """Every node: this one (``own``: its :func:`node_info` and health fields) and, on a store that several nodes
    share, the others, by name."""
    records = broker.durability.nodes() if broker.durability is not None else None
    if not records:
        return [own]
    found = []
    for record in records:
        info = cluster_node_info(record, now)
        found.append({**info, **own, "host": record.host, "started_at": record.started_at,
                      "seen_at": record.seen_at} if record.name == own["name"] else info)
    if own["name"] not in {record.name for record in records}:
        found.append(own)
    return found


def connection_name(session: Session, amqp_address: str) -> str:
    """A connection's name in the API, as RabbitMQ's: ``"127.0.0.1:50812 -> 127.0.0.1:5672"``, with the listener
    it came in on (the AMQPS one for a TLS connection)."""
    if "port" in session.details:
        amqp_address = f"{session.details['host']}:{session.details['port']}"
    return f"{session.peer} -> {amqp_address}"


def session_vhost(session: Session) -> str | None:
    """The vhost a connection has open; None before connection.open."""
    try:
        return session.vhost.name
    except errors.NotAllowed:
        return None


def connection_info(session: Session, amqp_address: str, node: str, rates: Rates | None = None) -> dict[str, Any]:
    """A client connection; ``amqp_address``: the plain AMQP listener's ``host:port`` (see connection_name);
    with ``rates``, its traffic (``recv_oct``, ``send_oct``, ... with their ``_details`` rates) as RabbitMQ's."""
    host, _, port = session.peer.rpartition(":")
    traffic = getattr(session.sink, "traffic", None)
    counters: dict[str, object] = {}
    if rates is not None and traffic is not None:
        counters = rates.stats(("connection", id(session)), traffic())
    return {**counters, "name": connection_name(session, amqp_address), "node": node, "type": "network",
            "protocol": session.protocol, "user": session.user.name if session.user else "",
            "vhost": session_vhost(session) or "", "channels": len(session.channels),
            "state": "running" if session.writable else "flow", "peer_host": host,
            "peer_port": int(port) if port.isdigit() else 0, **session.details,
            "client_properties": getattr(session.sink, "client_properties", {})}


def channel_infos(connection: dict[str, Any], session: Session, node: str) -> list[dict[str, Any]]:
    """The channels of ``session``, whose :func:`connection_info` is ``connection``."""
    return [{"name": f"{connection['name']} ({channel.number})", "number": channel.number,
             "connection_details": {"name": connection["name"], "peer_host": connection["peer_host"],
                                    "peer_port": connection["peer_port"]},
             "user": connection["user"], "vhost": connection["vhost"], "node": node,
             "confirm": channel.confirm, "transactional": channel.tx is not None,
             "prefetch_count": channel.prefetch, "global_prefetch_count": channel.global_prefetch,
             "consumer_count": len(channel.consumers), "messages_unacknowledged": len(channel.unacked),
             "state": "running"} for channel in session.channels.values()]


def consumer_infos(vhost: VHost, amqp_address: str, node: str) -> list[dict[str, Any]]:
    """The consumers of every queue in ``vhost``."""
    found = []
    for queue in vhost.queues.values():
        for consumer in queue.consumers:
            connection = connection_info(consumer.channel.session, amqp_address, node)
            found.append({"consumer_tag": consumer.tag, "queue": {"name": queue.name, "vhost": vhost.name},
                          "channel_details": {"name": f"{connection['name']} ({consumer.channel.number})",
                                              "number": consumer.channel.number,
                                              "connection_name": connection["name"],
                                              "peer_host": connection["peer_host"],
                                              "peer_port": connection["peer_port"], "user": connection["user"]},
                          "ack_required": not consumer.no_ack, "exclusive": consumer.exclusive,
                          "prefetch_count": consumer.prefetch, "arguments": consumer.arguments,
                          "active": True, "activity_status": "up"})
    return found
