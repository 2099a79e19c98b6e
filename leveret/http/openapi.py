"""The OpenAPI 3 description of the management API, served at ``GET /api/openapi.json``.

Built from one table, :data:`OPERATIONS`: one row per route that :class:`~leveret.http.api.app.ManagementAPI`
registers, with its request body, query parameters and response schema. The response schemas follow the JSON
that the handlers return (RabbitMQ's field names); ``tests/integration/test_http_openapi.py`` checks that the table and
the registered routes are the same set, and fuzzes the API against this description with schemathesis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import leveret

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(item: Schema) -> Schema:
    return {"type": "array", "items": item}


def obj(required: list[str] | None = None, /, **properties: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


STRING: Schema = {"type": "string"}
NULLABLE_STRING: Schema = {"type": "string", "nullable": True}
INTEGER: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
BOOLEAN: Schema = {"type": "boolean"}
NUMBER: Schema = {"type": "number"}
TABLE: Schema = {"type": "object", "additionalProperties": True, "description": "AMQP arguments or a JSON object"}
RATE: Schema = obj(["rate"], rate={"type": "number"})
LIMITS: Schema = {"type": "object", "additionalProperties": {"type": "integer"},
                  "description": "limit name (max-connections, max-queues, max-channels) to value; negative: none"}


def _message_stats() -> Schema:
    properties: Schema = {}
    for name in ("publish", "deliver_get", "ack", "redeliver"):
        properties[name] = COUNT
        properties[f"{name}_details"] = RATE
    return {"type": "object", "properties": properties, "required": list(properties),
            "description": "Counters since the object was made, each with its rate per second over the last "
                           "few seconds (`*_details.rate`), as RabbitMQ's message_stats."}


SCHEMAS: dict[str, Schema] = {
    "Error": obj(["error", "reason"], error=STRING, reason=STRING),
    "MessageStats": _message_stats(),
    "Overview": obj(
        ["management_version", "rabbitmq_version", "product_name", "product_version", "node", "object_totals",
         "queue_totals", "message_stats", "listeners"],
        management_version=STRING, rabbitmq_version=STRING, product_name=STRING, product_version=STRING,
        erlang_version=STRING, node=STRING, cluster_name=STRING,
        object_totals=obj(["queues", "exchanges", "connections", "channels", "consumers"], queues=COUNT,
                          exchanges=COUNT, connections=COUNT, channels=COUNT, consumers=COUNT),
        queue_totals=obj(["messages", "messages_ready", "messages_unacknowledged"], messages=COUNT,
                         messages_ready=COUNT, messages_unacknowledged=COUNT),
        message_stats=ref("MessageStats"),
        listeners=array(obj(["protocol", "ip_address", "port"], node=STRING, protocol=STRING, ip_address=STRING,
                            port=INTEGER))),
    "Whoami": obj(["name", "tags"], name=STRING, tags=array(STRING)),
    "VHost": obj(["name", "messages", "messages_ready", "messages_unacknowledged"], name=STRING,
                 description=STRING, tags=array(STRING), tracing=BOOLEAN, messages=COUNT, messages_ready=COUNT,
                 messages_unacknowledged=COUNT),
    "Queue": obj(
        ["name", "vhost", "durable", "auto_delete", "exclusive", "arguments", "messages", "messages_ready",
         "messages_unacknowledged", "consumers", "message_stats"],
        name=STRING, vhost=STRING, durable=BOOLEAN, auto_delete=BOOLEAN, exclusive=BOOLEAN, arguments=TABLE,
        policy=NULLABLE_STRING, effective_policy_definition=TABLE, messages=COUNT, messages_ready=COUNT,
        messages_unacknowledged=COUNT, message_bytes_ready=COUNT, consumers=COUNT, state=STRING, type=STRING,
        node=STRING, exclusive_consumer_tag=NULLABLE_STRING, message_stats=ref("MessageStats")),
    "Exchange": obj(["name", "vhost", "type", "durable", "auto_delete", "internal", "arguments"], name=STRING,
                    vhost=STRING, type=STRING, durable=BOOLEAN, auto_delete=BOOLEAN, internal=BOOLEAN,
                    arguments=TABLE, user_who_performed_action=STRING),
    "Binding": obj(["source", "vhost", "destination", "destination_type", "routing_key", "arguments",
                    "properties_key"], source=STRING, vhost=STRING, destination=STRING,
                   destination_type={"type": "string", "enum": ["queue", "exchange"]}, routing_key=STRING,
                   arguments=TABLE, properties_key=STRING),
    "User": obj(["name", "password_hash", "hashing_algorithm", "tags"], name=STRING, password_hash=STRING,
                hashing_algorithm=STRING, tags=array(STRING), limits=TABLE),
    "Permission": obj(["user", "vhost", "configure", "write", "read"], user=STRING, vhost=STRING,
                      configure=STRING, write=STRING, read=STRING),
    "Policy": {**obj(["vhost", "name", "pattern", "definition", "priority"], vhost=STRING, name=STRING,
                     pattern=STRING, definition=TABLE, priority=INTEGER),
               "properties": {"vhost": STRING, "name": STRING, "pattern": STRING, "apply-to": STRING,
                              "definition": TABLE, "priority": INTEGER}},
    "Definitions": {"type": "object", "additionalProperties": True, "properties": {
        "rabbit_version": STRING, "users": array(TABLE), "vhosts": array(TABLE), "permissions": array(TABLE),
        "policies": array(TABLE), "queues": array(TABLE), "exchanges": array(TABLE), "bindings": array(TABLE)},
        "description": "RabbitMQ's definitions format (see docs/management.md)"},
    # another node of a cluster (docs/cluster.md) has what the nodes table knows: name, running, os_pid, host, amqp
    # (where it listens for AMQP), started_at, seen_at (seconds since the epoch, the database's clock) and uptime
    "Node": obj(["name", "running"], name=STRING, type=STRING, running=BOOLEAN, mem_used=COUNT, mem_limit=COUNT,
                mem_alarm=BOOLEAN, disk_free_alarm=BOOLEAN, partitions=array(STRING), os_pid=STRING,
                being_drained=BOOLEAN, host=STRING, amqp=STRING, started_at=NUMBER, seen_at=NUMBER),
    "Connection": obj(["name", "user", "vhost", "channels", "peer_host", "peer_port"], name=STRING, node=STRING,
                      type=STRING, protocol=STRING, user=STRING, vhost=STRING, channels=COUNT, state=STRING,
                      peer_host=STRING, peer_port=INTEGER),
    "Channel": obj(["name", "number", "connection_details", "user", "vhost"], name=STRING, number=INTEGER,
                   connection_details=obj(["name"], name=STRING, peer_host=STRING, peer_port=INTEGER),
                   user=STRING, vhost=STRING, node=STRING, confirm=BOOLEAN, transactional=BOOLEAN,
                   prefetch_count=COUNT, global_prefetch_count=COUNT, consumer_count=COUNT,
                   messages_unacknowledged=COUNT, state=STRING),
    "Consumer": obj(["consumer_tag", "queue", "channel_details", "ack_required"], consumer_tag=STRING,
                    queue=obj(["name", "vhost"], name=STRING, vhost=STRING),
                    channel_details=obj(["name"], name=STRING, number=INTEGER, connection_name=STRING,
                                        peer_host=STRING, peer_port=INTEGER, user=STRING),
                    ack_required=BOOLEAN, exclusive=BOOLEAN, prefetch_count=COUNT, arguments=TABLE,
                    active=BOOLEAN, activity_status=STRING),
    "GotMessage": obj(["payload_bytes", "redelivered", "exchange", "routing_key", "message_count", "properties",
                       "payload", "payload_encoding"], payload_bytes=COUNT, redelivered=BOOLEAN, exchange=STRING,
                      routing_key=STRING, message_count=COUNT, properties=TABLE, payload=STRING,
                      payload_encoding={"type": "string", "enum": ["string", "base64"]}),
    "Status": obj(["status"], status={"type": "string", "enum": ["ok", "failed"]}, reason=STRING,
                  alarms=array(obj(["node", "resource"], node=STRING,
                                   resource={"type": "string", "enum": ["memory", "disk"]}))),
    "Routed": obj(["routed"], routed=BOOLEAN),
    "Moved": obj(["moved", "left"], moved=COUNT, left=COUNT),
    "Released": obj(["released"], released=BOOLEAN),
    # request bodies
    "QueueDeclare": obj(durable=BOOLEAN, auto_delete=BOOLEAN, arguments=TABLE, node=STRING),
    "ExchangeDeclare": obj(["type"], type=STRING, durable=BOOLEAN, auto_delete=BOOLEAN, internal=BOOLEAN,
                           arguments=TABLE),
    "QueueAction": {**obj(["action"], action={"type": "string",
                                              "enum": ["sync", "cancel_sync", "move", "replay_dead_letters",
                                                       "retry_now"]},
                           destination=STRING, count=COUNT, message_id=STRING),
                    "description": "RabbitMQ's sync and cancel_sync (nothing to do here: 204), and Leveret's "
                                   "extensions: move (up to count ready messages, default all, to the queue "
                                   "destination) and replay_dead_letters (each back to the queue its latest "
                                   "x-death names), server-side and lossless; these answer 200 with Moved; "
                                   "retry_now releases the message message_id waiting for its next attempt "
                                   "into this queue at once (200 with Released, 404 when none is waiting)"},
    "GetRequest": obj(["count", "ackmode"], count={"type": "integer", "minimum": 1},
                      ackmode={"type": "string", "enum": ["ack_requeue_true", "ack_requeue_false",
                                                           "reject_requeue_true", "reject_requeue_false"]},
                      encoding={"type": "string", "enum": ["auto", "base64"]},
                      truncate={"type": "integer", "minimum": 0}),
    "PublishRequest": obj(["routing_key", "payload"], routing_key=STRING, payload=STRING,
                          payload_encoding={"type": "string", "enum": ["string", "base64"]},
                          properties=obj(content_type=STRING, content_encoding=STRING, headers=TABLE,
                                         delivery_mode={"type": "integer", "enum": [1, 2]},
                                         priority={"type": "integer", "minimum": 0, "maximum": 255},
                                         correlation_id=STRING, reply_to=STRING,
                                         expiration={"type": "string", "pattern": "^[0-9]{1,10}$"},
                                         message_id=STRING, timestamp=COUNT, type=STRING, user_id=STRING,
                                         app_id=STRING)),
    "BindingRequest": obj(routing_key=STRING, arguments=TABLE),
    "VHostRequest": obj(description=STRING, tags={"oneOf": [STRING, array(STRING)]}, tracing=BOOLEAN),
    "UserRequest": obj(password=STRING, password_hash=STRING, tags={"oneOf": [STRING, array(STRING)]},
                       hashing_algorithm={"type": "string", "enum": ["rabbit_password_hashing_sha256"]}),
    "PermissionRequest": obj(configure=STRING, write=STRING, read=STRING),
    "TrackingEvent": {**obj(["time", "timestamp", "event"], time=STRING, timestamp={"type": "number"},
                            event=STRING), "additionalProperties": True,
                      "description": "one event of a message's history; the other fields depend on the event "
                                     "(docs/operations.md)"},
    "TaskStatus": {**obj(["id", "task", "queue", "state", "attempt", "created", "updated", "started", "finished",
                          "error", "expires"],
                         id=STRING, task=STRING, queue=STRING, state=STRING, attempt=COUNT,
                         created={"type": "number"}, updated={"type": "number"},
                         started={"type": "number", "nullable": True}, finished={"type": "number", "nullable": True},
                         error={"type": "object", "nullable": True, "additionalProperties": True},
                         expires={"type": "number"}, next_attempt_at={"type": "number"}, worker=STRING),
                   "additionalProperties": True,
                   "description": "a task's status record (docs/extensions.md, the status book); `result` is there "
                                  "when the task succeeded with a small result"},
    "VHostLimits": obj(["vhost", "value"], vhost=STRING, value=LIMITS),
    "UserLimits": obj(["user", "value"], user=STRING, value=LIMITS),
    "LimitRequest": obj(["value"], value=INTEGER),
    "PolicyRequest": {**obj(["pattern", "definition"], pattern=STRING, definition=TABLE, priority=INTEGER),
                      "properties": {"pattern": STRING, "definition": TABLE, "priority": INTEGER,
                                     "apply-to": {"type": "string", "enum": ["queues", "exchanges", "all"]}}},
}

PARAMETERS: dict[str, Schema] = {
    "vhost": {"description": "a vhost name, URL-encoded (the default vhost `/` is `%2F`)"},
    "name": {"description": "an object's name, URL-encoded (the default exchange is `amq.default`)"},
    "user": {"description": "a user name"},
    "node": {"description": "the node name, as `/api/overview` gives it"},
    "source": {"description": "the source exchange (`amq.default` for the default exchange)"},
    "kind": {"description": "`q` for a queue destination, `e` for an exchange", "schema": {"type": "string",
                                                                                           "enum": ["q", "e"]}},
    "destination": {"description": "the destination queue or exchange"},
    "props": {"description": "a binding's `properties_key`, URL-encoded"},
    "message_id": {"description": "a message's `message_id` property, URL-encoded"},
    "id": {"description": "a task id (the task message's `message_id`), URL-encoded"},
}


@dataclass(frozen=True)
class Op:
    method: str
    path: str  # as registered in ManagementAPI, without the leading "/api/"
    summary: str
    response: Schema | None = None  # the 200 body; None: 201/204 without a body
    body: str | None = None  # the request body's schema name
    query: tuple[tuple[str, Schema, str], ...] = ()
    errors: tuple[int, ...] = (401, 404)
    extra: dict[int, tuple[str, Schema | None]] = field(default_factory=dict)


_CHANGE = (400, 401, 403, 404, 409)  # what declarations may answer (core errors translated in ManagementAPI._handle)
_IF_UNUSED = ("if-unused", BOOLEAN, "refuse (400) when the object is in use")
_IF_EMPTY = ("if-empty", BOOLEAN, "refuse (400) when the queue has messages")
_CREATED: dict[int, tuple[str, Schema | None]] = {201: ("created", None)}

OPERATIONS: tuple[Op, ...] = (
    Op("GET", "overview", "Broker overview: versions, object and message totals, rates, listeners", ref("Overview")),
    Op("GET", "whoami", "The authenticated user", ref("Whoami")),
    Op("GET", "openapi.json", "This description", {"type": "object"}),
    Op("GET", "vhosts", "Virtual hosts the user may see", array(ref("VHost"))),
    Op("GET", "vhosts/{vhost}", "A virtual host", ref("VHost")),
    Op("PUT", "vhosts/{vhost}", "Create a virtual host", body="VHostRequest", errors=(400, 401), extra=_CREATED),
    Op("DELETE", "vhosts/{vhost}", "Delete a virtual host and everything in it", errors=_CHANGE),
    Op("GET", "queues", "All queues", array(ref("Queue"))),
    Op("GET", "queues/{vhost}", "The queues of a vhost", array(ref("Queue"))),
    Op("GET", "queues/{vhost}/{name}", "A queue", ref("Queue")),
    Op("PUT", "queues/{vhost}/{name}", "Declare a queue", body="QueueDeclare", errors=_CHANGE, extra=_CREATED),
    Op("DELETE", "queues/{vhost}/{name}", "Delete a queue", query=(_IF_UNUSED, _IF_EMPTY), errors=_CHANGE),
    Op("DELETE", "queues/{vhost}/{name}/contents", "Purge a queue", errors=_CHANGE),
    Op("POST", "queues/{vhost}/{name}/get", "Get messages (consuming or requeueing them, by ackmode)",
       array(ref("GotMessage")), body="GetRequest", errors=_CHANGE),
    Op("POST", "queues/{vhost}/{name}/actions",
       "Queue actions: sync, cancel_sync; move, replay_dead_letters and retry_now (Leveret extensions)",
       {"oneOf": [ref("Moved"), ref("Released")]},
       body="QueueAction", errors=_CHANGE, extra={204: ("sync or cancel_sync: done", None)}),
    Op("GET", "queues/{vhost}/{name}/bindings", "A queue's bindings", array(ref("Binding"))),
    Op("GET", "exchanges", "All exchanges", array(ref("Exchange"))),
    Op("GET", "exchanges/{vhost}", "The exchanges of a vhost", array(ref("Exchange"))),
    Op("GET", "exchanges/{vhost}/{name}", "An exchange", ref("Exchange")),
    Op("PUT", "exchanges/{vhost}/{name}", "Declare an exchange", body="ExchangeDeclare", errors=_CHANGE,
       extra=_CREATED),
    Op("DELETE", "exchanges/{vhost}/{name}", "Delete an exchange", query=(_IF_UNUSED,), errors=_CHANGE),
    Op("POST", "exchanges/{vhost}/{name}/publish", "Publish a message", ref("Routed"), body="PublishRequest",
       errors=_CHANGE),
    Op("GET", "bindings", "All bindings", array(ref("Binding"))),
    Op("GET", "bindings/{vhost}", "The bindings of a vhost", array(ref("Binding"))),
    Op("GET", "bindings/{vhost}/e/{source}/{kind}/{destination}", "Bindings between two objects",
       array(ref("Binding"))),
    Op("POST", "bindings/{vhost}/e/{source}/{kind}/{destination}", "Bind (answers Location: the properties key)",
       body="BindingRequest", errors=_CHANGE, extra=_CREATED),
    Op("GET", "bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", "A binding", ref("Binding")),
    Op("DELETE", "bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", "Unbind", errors=_CHANGE),
    Op("GET", "users", "Users", array(ref("User"))),
    Op("GET", "users/{user}", "A user", ref("User")),
    Op("PUT", "users/{user}", "Create or change a user", body="UserRequest", errors=(400, 401), extra=_CREATED),
    Op("DELETE", "users/{user}", "Delete a user", errors=_CHANGE),
    Op("GET", "users/{user}/permissions", "A user's permissions", array(ref("Permission"))),
    Op("GET", "permissions", "All permissions", array(ref("Permission"))),
    Op("GET", "permissions/{vhost}/{user}", "A user's permission in a vhost", ref("Permission")),
    Op("PUT", "permissions/{vhost}/{user}", "Grant a user access to a vhost", body="PermissionRequest",
       errors=_CHANGE, extra=_CREATED),
    Op("DELETE", "permissions/{vhost}/{user}", "Revoke a user's access to a vhost", errors=_CHANGE),
    Op("GET", "vhosts/{vhost}/permissions", "The permissions in a vhost", array(ref("Permission"))),
    Op("GET", "policies", "All policies", array(ref("Policy"))),
    Op("GET", "policies/{vhost}", "The policies of a vhost", array(ref("Policy"))),
    Op("GET", "policies/{vhost}/{name}", "A policy", ref("Policy")),
    Op("PUT", "policies/{vhost}/{name}", "Set a policy", body="PolicyRequest", errors=_CHANGE, extra=_CREATED),
    Op("DELETE", "policies/{vhost}/{name}", "Clear a policy", errors=_CHANGE),
    Op("GET", "vhost-limits", "The limits of every vhost that has some", array(ref("VHostLimits"))),
    Op("GET", "vhost-limits/{vhost}", "A vhost's limits", array(ref("VHostLimits"))),
    Op("PUT", "vhost-limits/{vhost}/{name}", "Set a vhost limit (max-connections, max-queues)",
       body="LimitRequest", errors=_CHANGE),
    Op("DELETE", "vhost-limits/{vhost}/{name}", "Clear a vhost limit", errors=_CHANGE),
    Op("GET", "user-limits", "The limits of every user that has some", array(ref("UserLimits"))),
    Op("GET", "user-limits/{user}", "A user's limits", array(ref("UserLimits"))),
    Op("PUT", "user-limits/{user}/{name}", "Set a user limit (max-connections, max-channels)",
       body="LimitRequest", errors=_CHANGE),
    Op("DELETE", "user-limits/{user}/{name}", "Clear a user limit", errors=_CHANGE),
    Op("GET", "definitions", "Export definitions", ref("Definitions"),
       query=(("download", STRING, "answer with Content-Disposition: attachment and this file name"),)),
    Op("POST", "definitions", "Import definitions", body="Definitions", errors=_CHANGE),
    Op("GET", "nodes", "The node, or every node of the cluster", array(ref("Node"))),
    Op("GET", "nodes/{node}", "The node by name", ref("Node")),
    Op("GET", "connections", "Client connections", array(ref("Connection"))),
    Op("GET", "connections/{name}", "A client connection", ref("Connection")),
    Op("DELETE", "connections/{name}", "Close a client connection (320 CONNECTION_FORCED with the X-Reason "
       "header's text, default `Closed via management plugin`)", errors=(401, 404)),
    Op("GET", "vhosts/{vhost}/connections", "The client connections of a vhost", array(ref("Connection"))),
    Op("GET", "channels", "Channels", array(ref("Channel"))),
    Op("GET", "vhosts/{vhost}/channels", "The channels of a vhost", array(ref("Channel"))),
    Op("GET", "consumers", "Consumers", array(ref("Consumer"))),
    Op("GET", "consumers/{vhost}", "The consumers of a vhost", array(ref("Consumer"))),
    Op("GET", "tracking/{vhost}/{message_id}", "What happened to the messages with this message_id (Leveret's "
       "message tracking; 400 when it is off)", array(ref("TrackingEvent")), errors=(400, 401, 404)),
    Op("GET", "task-status/{vhost}/{id}", "The status record of a task id (Leveret's status book; 404 when it is "
       "unknown or expired)", ref("TaskStatus"), errors=(401, 404),
       extra={503: ("the store could not be read", ref("Error"))}),
    Op("GET", "tasks/{vhost}", "The tasks whose status records changed most recently, newest first (Leveret's "
       "status book; the last 1,000 ids since the broker started)", array(ref("TaskStatus")),
       query=(("state", STRING, "keep one state: queued, started, retrying, failed, succeeded, gave_up, revoked"),
              ("limit", STRING, "at most this many, 1..1000 (default 200)")), errors=(400, 401, 404),
       extra={503: ("the store could not be read", ref("Error"))}),
    Op("GET", "aliveness-test/{vhost}", "Declare aliveness-test, publish to it and get the message back",
       ref("Status"), errors=(401, 404), extra={503: ("the test failed", ref("Status"))}),
    Op("GET", "health/checks/alarms", "503 while a memory or disk alarm is on", ref("Status"),
       errors=(401,), extra={503: ("an alarm is on", ref("Status"))}),
)

_ERROR_TEXT = {400: "bad request", 401: "not authorised (no or wrong credentials, or tags too low)",
               403: "access refused (reserved name)", 404: "no such object", 409: "resource locked (exclusive)",
               415: "the body is not application/json"}


def _json(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(op: Op) -> Schema:
    names = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    parameters: list[Schema] = []
    for name in names:
        spec = PARAMETERS[name]
        parameters.append({"name": name, "in": "path", "required": True, "description": spec["description"],
                           "schema": spec.get("schema", {"type": "string", "minLength": 1})})
    for name, schema, description in op.query:
        parameters.append({"name": name, "in": "query", "required": False, "description": description,
                           "schema": schema})
    if op.method == "DELETE" and op.path == "connections/{name}":
        parameters.append({"name": "X-Reason", "in": "header", "required": False, "schema": STRING,
                           "description": "the reason the client is told"})
    responses: Schema = {}
    if op.response is not None:
        responses["200"] = {"description": "OK", **_json(op.response)}
    elif op.method in ("PUT", "POST", "DELETE"):
        responses["204"] = {"description": "done"}
    for status, (description, content) in op.extra.items():
        responses[str(status)] = {"description": description, **(_json(content) if content else {})}
    for status in op.errors:
        responses[str(status)] = {"description": _ERROR_TEXT[status], **_json(ref("Error"))}
    operation: Schema = {"summary": op.summary, "operationId": f"{op.method.lower()} {op.path}",
                         "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {"required": False, **_json(ref(op.body))}
        responses["415"] = {"description": _ERROR_TEXT[415], **_json(ref("Error"))}
    return operation


def openapi_path(path: str) -> str:
    return "/api/" + path


def build() -> Schema:
    paths: dict[str, Schema] = {}
    for op in OPERATIONS:
        paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = _operation(op)
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics (no authentication)", "security": [],
                                 "operationId": "get metrics",
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {"schema": STRING}}}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Leveret management API", "version": leveret.__version__,
                 "description": "RabbitMQ's management HTTP API, as far as Leveret serves it (docs/management.md)."},
        "servers": [{"url": "/"}],
        "security": [{"basic": []}],
        "paths": paths,
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
                       "schemas": SCHEMAS},
    }
