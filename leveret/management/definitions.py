"""Definitions export and import in RabbitMQ's JSON format (``GET``/``POST /api/definitions``), so a file
exported from RabbitMQ 3.x loads into Leveret and the other way round.

Exported: users (with their sha256 password hashes and limits), vhosts (with their limits, also as RabbitMQ's
``vhost-limits`` runtime parameters), permissions, policies, and the non-exclusive
queues, the exchanges (not the default or ``amq.*`` ones) and the bindings between them (not the implicit
default-exchange ones). Import applies each section in dependency order through the core, so every object is
validated as a declaration over AMQP would be; it stops at the first error (what came before stays).

Used by the HTTP handlers (``leveret/http/api/definitions.py``) and the control socket (``leveret ctl
export_definitions/import_definitions``).
"""

from __future__ import annotations

from typing import Any

import leveret
from leveret import RABBITMQ_VERSION
from leveret.core import audit
from leveret.core.lifecycle import queue_type

from .context import Management
from .validation import (
    HASHING_ALGORITHM,
    bad_request,
    parse_bool,
    parse_dict,
    parse_tags,
    password_hash_of,
    policy_from,
)
from .views import bindings_of, permission_info, policy_info


def export(api: Management) -> dict[str, Any]:
    """The broker's definitions in RabbitMQ's export format."""
    broker = api.broker
    vhosts = sorted(broker.vhosts.values(), key=lambda v: v.name)
    return {
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Leveret",
        "product_version": leveret.__version__,
        "users": [{"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": HASHING_ALGORITHM,
                   "tags": list(u.tags), "limits": dict(u.limits)} for u in broker.users.values()],
        # RabbitMQ 3.10 writes a vhost's limits as a list of [name, value] pairs here and, authoritatively, as a
        # "vhost-limits" parameter (what its import reads)
        "vhosts": [{"name": v.name, "limits": [[k, n] for k, n in sorted(v.limits.items())],
                    "metadata": {"description": "", "tags": []}} for v in vhosts],
        "permissions": [permission_info(u, v) for u in broker.users.values() for v in sorted(u.vhosts)],
        "topic_permissions": [],
        "parameters": [{"vhost": v.name, "component": "vhost-limits", "name": "limits", "value": dict(v.limits)}
                       for v in vhosts if v.limits],
        "global_parameters": [],
        "policies": [policy_info(p) for v in vhosts for p in v.policies.values()],
        "queues": [{"name": q.name, "vhost": v.name, "durable": q.durable, "auto_delete": q.auto_delete,
                    "type": queue_type(q.arguments), "arguments": q.arguments}
                   for v in vhosts for q in v.queues.values() if not q.exclusive],
        "exchanges": [{"name": e.name, "vhost": v.name, "type": e.type_name, "durable": e.durable,
                       "auto_delete": e.auto_delete, "internal": e.internal, "arguments": e.arguments}
                      for v in vhosts for e in v.exchanges.values() if e.name and not e.name.startswith("amq.")],
        "bindings": [{k: b[k] for k in ("source", "vhost", "destination", "destination_type", "routing_key",
                                        "arguments")}
                     for v in vhosts for b in bindings_of(v, with_default=False)],
    }


def _list(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = body.get(key) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise bad_request(f"'{key}' must be a list of objects")
    return items


def _field(item: dict[str, Any], key: str, section: str) -> Any:
    if key not in item:
        raise bad_request(f"an entry of '{section}' has no '{key}'")
    return item[key]


def import_audited(api: Management, body: dict[str, Any]) -> None:
    """Import a definitions document (HTTP and ``leveret ctl``): one ``definitions.import`` audit entry, and
    each change it makes is audited with the importer as a ``definitions`` actor."""
    actor = {**audit.actor(), "via": "definitions"}
    api.broker.audit.record("definitions.import", sections=sorted(k for k, v in body.items()
                                                                  if isinstance(v, list) and v))
    with audit.acting(actor):
        import_(api, body)


def import_(api: Management, body: dict[str, Any]) -> None:
    """Apply a definitions document. Raises HTTPFailure (400) for a malformed one and core errors for
    objects the core refuses (inequivalent redeclarations, bad arguments, unknown vhosts)."""
    broker = api.broker
    sections = {key: _list(body, key) for key in ("vhosts", "users", "permissions", "parameters", "policies",
                                                  "exchanges", "queues", "bindings")}
    for item in sections["vhosts"]:
        name = _field(item, "name", "vhosts")
        if not isinstance(name, str) or not name:
            raise bad_request("a vhost name must be a non-empty string")
        broker.add_vhost(name)
        limits = item.get("limits")
        if isinstance(limits, list) and all(isinstance(p, list) and len(p) == 2 for p in limits):
            limits = dict(limits)  # RabbitMQ's export shape: [[name, value], ...]
        if limits:
            broker.set_vhost_limits(name, limits)
    for item in sections["users"]:
        name = _field(item, "name", "users")
        if not isinstance(name, str) or not name:
            raise bad_request("a user name must be a non-empty string")
        broker.put_user(name, password_hash_of(item, broker.users.get(name)), parse_tags(item.get("tags")))
        if item.get("limits"):
            broker.set_user_limits(name, item["limits"], replace=True)
    for item in sections["parameters"]:
        if item.get("component") == "vhost-limits":
            broker.set_vhost_limits(_field(item, "vhost", "parameters"), _field(item, "value", "parameters"))
    for item in sections["permissions"]:
        broker.set_permission(_field(item, "user", "permissions"), _field(item, "vhost", "permissions"),
                              str(item.get("configure", ".*")), str(item.get("write", ".*")),
                              str(item.get("read", ".*")))
    for item in sections["policies"]:
        broker.set_policy(policy_from(item, _field(item, "vhost", "policies"), _field(item, "name", "policies")))
    for item in sections["exchanges"]:
        vhost = api.vhost(_field(item, "vhost", "exchanges"))
        name = _field(item, "name", "exchanges")
        if not name or name.startswith("amq."):
            continue  # the predeclared exchanges exist in every vhost
        vhost.declare_exchange(name, _field(item, "type", "exchanges"), durable=parse_bool(item, "durable", True),
                               auto_delete=parse_bool(item, "auto_delete", False),
                               internal=parse_bool(item, "internal", False), arguments=parse_dict(item, "arguments"))
    for item in sections["queues"]:
        vhost = api.vhost(_field(item, "vhost", "queues"))
        arguments = parse_dict(item, "arguments")
        if item.get("type", "classic") != "classic" and "x-queue-type" not in arguments:  # a field since 3.13
            arguments = {**arguments, "x-queue-type": item["type"]}
        # the core checks the type (streams and unknown types are refused, 406)
        vhost.declare_queue(None, _field(item, "name", "queues"), durable=parse_bool(item, "durable", True),
                            auto_delete=parse_bool(item, "auto_delete", False), arguments=arguments)
    for item in sections["bindings"]:
        vhost = api.vhost(_field(item, "vhost", "bindings"))
        source, destination = _field(item, "source", "bindings"), _field(item, "destination", "bindings")
        routing_key, arguments = item.get("routing_key", ""), parse_dict(item, "arguments")
        if item.get("destination_type", "queue") == "queue":
            vhost.bind_queue(destination, source, routing_key, arguments, None)
        else:
            vhost.bind_exchange(destination, source, routing_key, arguments)

