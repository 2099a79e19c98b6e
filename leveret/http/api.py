"""The management HTTP API, shaped like RabbitMQ's management plugin (``/api/...``) so its tools work.

One aiohttp handler takes every ``/api/`` request: it authenticates (HTTP basic against the broker's users),
routes on the raw path segments (a vhost ``/`` is written ``%2F``, as with RabbitMQ, so segments are split
before they are decoded), checks the user's tags, and calls the core. Core errors are translated to HTTP
once, in :meth:`ManagementAPI._handle`, into RabbitMQ's ``{"error": ..., "reason": ...}`` bodies.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

import leveret
from leveret import RABBITMQ_VERSION  # what tools that check the version are told (RabbitMQ's numbers)
from leveret.amqp.codec import RawField
from leveret.core import audit, errors
from leveret.core.access import Access
from leveret.core.broker import Broker, Session, User, VHost, process_rss, strip_crlf
from leveret.core.exchanges import Exchange
from leveret.core.lifecycle import queue_type
from leveret.core.message import Message, build_address, build_header
from leveret.core.passwords import hash_password
from leveret.core.policies import Policy
from leveret.core.queue import Queue
from leveret.core.routing import Peer, validate
from leveret.core.tracing import set_tracing
from leveret.core.tracking import MESSAGE_ID

from . import definitions, openapi
from . import web as web_page
from .metrics import render_metrics
from .rates import Rates

log = logging.getLogger("leveret.http")

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
CLOSE_REASON = "Closed via management plugin"  # RabbitMQ's default reason of DELETE /api/connections/{name}
READ_TAGS = frozenset({"administrator", "monitoring", "management", "policymaker"})

STATUS: dict[type[errors.BrokerError], tuple[int, str]] = {
    errors.NotFound: (404, "Object Not Found"),
    errors.PreconditionFailed: (400, "bad_request"),
    errors.CommandInvalid: (400, "bad_request"),
    errors.NotAllowed: (400, "bad_request"),
    errors.NotImplementedFeature: (400, "bad_request"),
    errors.AccessRefused: (403, "access_refused"),
    errors.PermissionRefused: (401, "not_authorised"),  # reason "Access refused.", as RabbitMQ's API
    errors.ResourceLocked: (409, "resource_locked"),
}


class HTTPFailure(Exception):
    """An HTTP-level refusal raised by the API itself (bad body, not authorised, unknown path)."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def bad_request(reason: str) -> HTTPFailure:
    return HTTPFailure(400, "bad_request", reason)


Handler = Callable[..., Awaitable[Any]]


@dataclass
class Route:
    method: str
    pattern: tuple[str, ...]  # literals, or "{name}" for a path parameter
    handler: Handler
    level: str  # "read"; "vhost": change objects in a vhost the user may use; "policy"; "admin"


@dataclass
class Call:
    """One request as the handlers see it."""

    request: web.Request
    user: User
    params: dict[str, str]

    async def body(self) -> dict[str, Any]:
        raw = await self.request.read()
        if not raw.strip():
            return {}
        if self.request.content_type != "application/json":
            # as RabbitMQ's API (415); and a cross-site <form> (text/plain, no CORS check) cannot make changes
            raise HTTPFailure(415, "unsupported_media_type", "the request body must be application/json")
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"request body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise bad_request("request body must be a JSON object")
        return value

    def query_flag(self, name: str) -> bool:
        return self.request.query.get(name, "").lower() in ("true", "1")


def reply(value: Any = None, status: int = 200) -> web.Response:
    if value is None:
        return web.Response(status=status if status != 200 else 204)
    return web.Response(status=status, text=json.dumps(value, default=_json_default), content_type="application/json")


def _json_default(value: Any) -> Any:
    if isinstance(value, RawField):
        return value.plain
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


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


def _exchange_name(name: str) -> str:
    return "" if name == "amq.default" else name


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if isinstance(value, str):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise bad_request(f"'{key}' must be true or false")
    return value


def _dict(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise bad_request(f"'{key}' must be a JSON object")
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(t.strip() for t in value if t.strip())
    raise bad_request("'tags' must be a comma-separated string or a list of strings")


class ManagementAPI:
    """The routes and handlers over one broker. ``sessions()`` lists the open client connections (for
    counts), ``listeners()`` the broker's listeners (for /api/overview). ``metrics_auth``: /metrics asks for
    the login of a user tagged ``monitoring`` or ``administrator`` (off: open, as RabbitMQ's plugin)."""

    def __init__(self, broker: Broker, *, sessions: Callable[[], list[Session]],
                 listeners: Callable[[], list[dict[str, Any]]], metrics_auth: bool = False) -> None:
        self.broker = broker
        self.metrics_auth = metrics_auth
        self.sessions = sessions
        self.listeners = listeners
        self.rates = Rates()
        self.routes: list[Route] = []
        r = self._route
        r("GET", "overview", self.overview)
        r("GET", "whoami", self.whoami)
        r("GET", "vhosts", self.list_vhosts)
        r("GET", "vhosts/{vhost}", self.get_vhost)
        r("PUT", "vhosts/{vhost}", self.put_vhost, "admin")
        r("DELETE", "vhosts/{vhost}", self.delete_vhost, "admin")
        r("GET", "queues", self.list_queues)
        r("GET", "queues/{vhost}", self.list_queues)
        r("GET", "queues/{vhost}/{name}", self.get_queue)
        r("PUT", "queues/{vhost}/{name}", self.put_queue, "vhost")
        r("DELETE", "queues/{vhost}/{name}", self.delete_queue, "vhost")
        r("DELETE", "queues/{vhost}/{name}/contents", self.purge_queue, "vhost")
        r("POST", "queues/{vhost}/{name}/get", self.get_messages, "vhost")
        r("GET", "queues/{vhost}/{name}/bindings", self.queue_bindings)
        r("GET", "exchanges", self.list_exchanges)
        r("GET", "exchanges/{vhost}", self.list_exchanges)
        r("GET", "exchanges/{vhost}/{name}", self.get_exchange)
        r("PUT", "exchanges/{vhost}/{name}", self.put_exchange, "vhost")
        r("DELETE", "exchanges/{vhost}/{name}", self.delete_exchange, "vhost")
        r("POST", "exchanges/{vhost}/{name}/publish", self.publish, "vhost")
        r("GET", "bindings", self.list_bindings)
        r("GET", "bindings/{vhost}", self.list_bindings)
        r("GET", "bindings/{vhost}/e/{source}/{kind}/{destination}", self.list_bindings_between)
        r("POST", "bindings/{vhost}/e/{source}/{kind}/{destination}", self.post_binding, "vhost")
        r("GET", "bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", self.get_binding)
        r("DELETE", "bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", self.delete_binding, "vhost")
        r("GET", "users", self.list_users, "admin")
        r("GET", "users/{user}", self.get_user, "admin")
        r("PUT", "users/{user}", self.put_user, "admin")
        r("DELETE", "users/{user}", self.delete_user, "admin")
        r("GET", "users/{user}/permissions", self.user_permissions, "admin")
        r("GET", "permissions", self.list_permissions, "admin")
        r("GET", "permissions/{vhost}/{user}", self.get_permission, "admin")
        r("PUT", "permissions/{vhost}/{user}", self.put_permission, "admin")
        r("DELETE", "permissions/{vhost}/{user}", self.delete_permission, "admin")
        r("GET", "vhosts/{vhost}/permissions", self.vhost_permissions, "admin")
        r("GET", "vhost-limits", self.list_vhost_limits, "admin")
        r("GET", "vhost-limits/{vhost}", self.list_vhost_limits, "admin")
        r("PUT", "vhost-limits/{vhost}/{name}", self.put_vhost_limit, "admin")
        r("DELETE", "vhost-limits/{vhost}/{name}", self.delete_vhost_limit, "admin")
        r("GET", "user-limits", self.list_user_limits, "admin")
        r("GET", "user-limits/{user}", self.list_user_limits, "admin")
        r("PUT", "user-limits/{user}/{name}", self.put_user_limit, "admin")
        r("DELETE", "user-limits/{user}/{name}", self.delete_user_limit, "admin")
        r("GET", "policies", self.list_policies)
        r("GET", "policies/{vhost}", self.list_policies)
        r("GET", "policies/{vhost}/{name}", self.get_policy)
        r("PUT", "policies/{vhost}/{name}", self.put_policy, "policy")
        r("DELETE", "policies/{vhost}/{name}", self.delete_policy, "policy")
        r("GET", "definitions", self.get_definitions, "admin")
        r("POST", "definitions", self.post_definitions, "admin")
        r("GET", "nodes", self.list_nodes)
        r("GET", "nodes/{node}", self.get_node)
        r("GET", "connections", self.list_connections)
        r("GET", "connections/{name}", self.get_connection)
        r("DELETE", "connections/{name}", self.delete_connection)
        r("GET", "vhosts/{vhost}/connections", self.list_connections)
        r("GET", "channels", self.list_channels)
        r("GET", "vhosts/{vhost}/channels", self.list_channels)
        r("GET", "consumers", self.list_consumers)
        r("GET", "consumers/{vhost}", self.list_consumers)
        r("GET", "aliveness-test/{vhost}", self.aliveness)
        r("GET", "health/checks/alarms", self.alarms)
        r("GET", "openapi.json", self.openapi_description)
        r("GET", "tracking/{vhost}/{message_id}", self.get_tracking)
        r("GET", "task-status/{vhost}/{id}", self.get_task_status)

    def _route(self, method: str, path: str, handler: Handler, level: str = "read") -> None:
        self.routes.append(Route(method, tuple(path.split("/")), handler, level))

    def app(self) -> web.Application:
        application = web.Application(client_max_size=64 * 1024 * 1024)
        application.router.add_route("*", r"/api/{tail:[\s\S]*}", self._handle)  # any byte, newlines too
        application.router.add_route("*", "/api", self._handle)
        application.router.add_get("/metrics", self._metrics)
        web_page.add_routes(application)
        return application

    # --- the one entry point: authentication, routing, authorisation, error translation -------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            user = self._authenticate(request)
            route, params = self._match(request)
            self._authorise(user, route, params)
            audit.set_actor({"via": "http", "user": user.name, "address": request.remote})  # this request's task
            return await route.handler(Call(request, user, params))  # type: ignore[no-any-return]
        except HTTPFailure as exc:
            response = reply({"error": exc.error, "reason": exc.reason}, exc.status)
            if exc.status == 401 and request.headers.get("X-Requested-With") != "XMLHttpRequest":
                # not for the web page's requests: a browser would open its own login dialog over the page's
                response.headers["WWW-Authenticate"] = 'Basic realm="RabbitMQ Management"'
            return response
        except errors.BrokerError as exc:
            status, error = STATUS.get(type(exc), (500, "internal_error"))
            reason = "Access refused." if isinstance(exc, errors.PermissionRefused) else exc.text
            return reply({"error": error, "reason": reason}, status)
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("management API: %s %s failed", request.method, request.path)
            return reply({"error": "internal_error", "reason": f"{type(exc).__name__}: {exc}"}, 500)

    def _authenticate(self, request: web.Request) -> User:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise HTTPFailure(401, "not_authorised", "Not_Authorized")
        try:
            username, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text
            raise HTTPFailure(401, "not_authorised", "Not_Authorized") from None
        try:
            return self.broker.authenticate(username, password, _is_loopback(request.remote))
        except errors.AccessRefused as exc:
            self.broker.audit.record("login.refused", by={"via": "http", "address": request.remote},
                                     protocol="http", user=username, peer=request.remote, reason=exc.text)
            raise HTTPFailure(401, "not_authorised", exc.text) from None

    def _match(self, request: web.Request) -> tuple[Route, dict[str, str]]:
        raw = request.raw_path.split("?", 1)[0]
        segments = raw.split("/")[2:]  # "", "api", ...
        if segments and segments[-1] == "":
            segments.pop()
        allowed: list[str] = []
        for route in self.routes:
            if len(route.pattern) != len(segments):
                continue
            params: dict[str, str] = {}
            for literal, segment in zip(route.pattern, segments, strict=True):
                if literal.startswith("{"):
                    params[literal[1:-1]] = unquote(segment)
                elif literal != segment:
                    break
            else:
                if route.method == request.method or (route.method == "GET" and request.method == "HEAD"):
                    return route, params
                allowed.append(route.method)
        if allowed:
            raise HTTPFailure(405, "method_not_allowed", f"allowed: {', '.join(allowed)}")
        raise HTTPFailure(404, "Object Not Found", "Not Found")

    def _authorise(self, user: User, route: Route, params: dict[str, str]) -> None:
        tags = set(user.tags)
        if "administrator" in tags:
            return
        if not tags & READ_TAGS:
            raise HTTPFailure(401, "not_authorised", "Not management user")
        if route.level == "admin" or (route.level == "policy" and "policymaker" not in tags):
            raise HTTPFailure(401, "not_authorised", "Not administrator user")
        vhost = params.get("vhost")
        if vhost is not None and vhost not in user.vhosts and (route.level != "read" or "monitoring" not in tags):
            raise HTTPFailure(401, "not_authorised", "User not authorised to access virtual host")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_auth:
            try:
                user = self._authenticate(request)
                if not {"administrator", "monitoring"} & set(user.tags):
                    raise HTTPFailure(401, "not_authorised", "Not monitor user")
            except HTTPFailure as exc:
                response = reply({"error": exc.error, "reason": exc.reason}, exc.status)
                response.headers["WWW-Authenticate"] = 'Basic realm="Leveret metrics"'
                return response
        body, content_type = render_metrics(self.broker, self.sessions())
        return web.Response(body=body, headers={"Content-Type": content_type})

    # --- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def access(call: Call, vhost: VHost) -> Access:
        """The calling user's permissions in ``vhost``: the API's changes to queues, exchanges and bindings, its
        publish and get are checked as the same AMQP operations would be (RabbitMQ's management plugin runs
        them on an AMQP channel as that user), for administrators too."""
        return Access(call.user, vhost.name)

    def vhost(self, name: str) -> VHost:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise errors.NotFound(f"no vhost '{name}'")
        return vhost

    def _vhosts(self, call: Call) -> list[VHost]:
        name = call.params.get("vhost")
        if name is not None:
            return [self.vhost(name)]
        if {"administrator", "monitoring"} & set(call.user.tags):
            return list(self.broker.vhosts.values())
        return [v for v in self.broker.vhosts.values() if v.name in call.user.vhosts]

    async def _durable(self) -> None:
        """Wait until the message operations just made are on disk (as a confirm would)."""
        durability = self.broker.durability
        if durability is None or not (durability.ops or durability.in_flight):
            return
        done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def committed(exc: BaseException | None) -> None:
            if not done.done():
                done.set_result(exc)

        durability.commit([committed])
        exc = await done
        if exc is not None:
            raise errors.InternalError(f"the store failed: {exc}")

    def queue_info(self, queue: Queue) -> dict[str, Any]:
        ready, unacked = queue.message_count, queue.unacked_count
        return {
            "name": queue.name, "vhost": queue.vhost.name, "durable": queue.durable,
            "auto_delete": queue.auto_delete, "exclusive": queue.exclusive, "arguments": queue.arguments,
            "policy": queue.policy, "effective_policy_definition": self._policy_definition(queue.vhost,
                                                                                          queue.policy),
            "messages": ready + unacked, "messages_ready": ready, "messages_unacknowledged": unacked,
            "message_bytes_ready": queue.ready_bytes, "consumers": queue.consumer_count,
            "state": "running", "type": queue_type(queue.arguments), "node": self.broker.node_name,
            "exclusive_consumer_tag": None,
            "message_stats": self.rates.stats(("queue", queue.vhost.name, queue.name), {
                "publish": queue.stats_published, "deliver_get": queue.stats_delivered, "ack": queue.stats_acked}),
        }

    @staticmethod
    def _policy_definition(vhost: VHost, name: str | None) -> dict[str, Any]:
        policy = vhost.policies.get(name) if name else None
        return dict(policy.definition) if policy is not None else {}

    @staticmethod
    def exchange_info(vhost: VHost, exchange: Exchange) -> dict[str, Any]:
        return {"name": exchange.name, "vhost": vhost.name, "type": exchange.type_name,
                "durable": exchange.durable, "auto_delete": exchange.auto_delete, "internal": exchange.internal,
                "arguments": exchange.arguments, "user_who_performed_action": "rmq-internal"}

    @staticmethod
    def binding_info(vhost: VHost, source: str, destination: Any, routing_key: str,
                     arguments: dict[str, Any]) -> dict[str, Any]:
        kind = "queue" if isinstance(destination, Queue) else "exchange"
        return {"source": source, "vhost": vhost.name, "destination": destination.name, "destination_type": kind,
                "routing_key": routing_key, "arguments": arguments,
                "properties_key": properties_key(routing_key, arguments)}

    def bindings_of(self, vhost: VHost, with_default: bool = True) -> list[dict[str, Any]]:
        found = []
        if with_default:
            found = [self.binding_info(vhost, "", q, q.name, {}) for q in vhost.queues.values()]
        for exchange in vhost.exchanges.values():
            if exchange.name:
                for b in exchange.bindings():
                    found.append(self.binding_info(vhost, exchange.name, b.destination, b.routing_key, b.table()))
        return found

    def user_info(self, user: User) -> dict[str, Any]:
        return {"name": user.name, "password_hash": user.password_hash, "hashing_algorithm": HASHING_ALGORITHM,
                "tags": list(user.tags), "limits": dict(user.limits)}

    def permission_info(self, user: str, vhost: str) -> dict[str, Any]:
        configure, write, read = self.broker.users[user].permissions[vhost].patterns()
        return {"user": user, "vhost": vhost, "configure": configure, "write": write, "read": read}

    @staticmethod
    def policy_info(policy: Policy) -> dict[str, Any]:
        return {"vhost": policy.vhost, "name": policy.name, "pattern": policy.pattern,
                "apply-to": policy.apply_to, "definition": policy.definition, "priority": policy.priority}

    # --- overview ----------------------------------------------------------------------------------

    async def overview(self, call: Call) -> web.Response:
        sessions = self.sessions()
        queues = [q for v in self.broker.vhosts.values() for q in v.queues.values()]
        ready = sum(q.message_count for q in queues)
        unacked = sum(q.unacked_count for q in queues)
        return reply({
            "management_version": RABBITMQ_VERSION, "rabbitmq_version": RABBITMQ_VERSION,
            "product_name": "Leveret", "product_version": leveret.__version__,
            "erlang_version": "n/a", "node": self.broker.node_name, "cluster_name": self.broker.node_name,
            "object_totals": {
                "queues": len(queues),
                "exchanges": sum(len(v.exchanges) for v in self.broker.vhosts.values()),
                "connections": len(sessions),
                "channels": sum(len(s.channels) for s in sessions),
                "consumers": sum(q.consumer_count for q in queues),
            },
            "queue_totals": {"messages": ready + unacked, "messages_ready": ready,
                             "messages_unacknowledged": unacked},
            "message_stats": self.rates.stats("overview", {"publish": sum(q.stats_published for q in queues),
                                                           "deliver_get": sum(q.stats_delivered for q in queues),
                                                           "ack": sum(q.stats_acked for q in queues)}),
            "listeners": self.listeners(),
        })

    async def openapi_description(self, call: Call) -> web.Response:
        return reply(openapi.build())

    async def whoami(self, call: Call) -> web.Response:
        return reply({"name": call.user.name, "tags": list(call.user.tags)})

    # --- vhosts ------------------------------------------------------------------------------------

    def vhost_info(self, vhost: VHost) -> dict[str, Any]:
        ready = sum(q.message_count for q in vhost.queues.values())
        unacked = sum(q.unacked_count for q in vhost.queues.values())
        return {"name": vhost.name, "description": "", "tags": [], "tracing": vhost.tracer is not None,
                "messages": ready + unacked,
                "messages_ready": ready, "messages_unacknowledged": unacked}

    async def list_vhosts(self, call: Call) -> web.Response:
        visible = [v for v in self.broker.vhosts.values()
                   if call.user.tags and ({"administrator", "monitoring"} & set(call.user.tags)
                                          or v.name in call.user.vhosts)]
        return reply([self.vhost_info(v) for v in sorted(visible, key=lambda v: v.name)])

    async def get_vhost(self, call: Call) -> web.Response:
        return reply(self.vhost_info(self.vhost(call.params["vhost"])))

    async def put_vhost(self, call: Call) -> web.Response:
        body = await call.body()
        name = call.params["vhost"]
        if not name:
            raise bad_request("a vhost needs a name")
        created = name not in self.broker.vhosts
        vhost = self.broker.add_vhost(name)
        if created:  # as RabbitMQ's API: the user who made the vhost may use it
            self.broker.set_permission(call.user.name, name)
        if "tracing" in body:  # RabbitMQ's way to switch the firehose from the API
            set_tracing(vhost, _bool(body, "tracing", False))
        return reply(None, 201 if created else 204)

    async def delete_vhost(self, call: Call) -> web.Response:
        self.broker.delete_vhost(call.params["vhost"])
        return reply(None, 204)

    # --- queues ------------------------------------------------------------------------------------

    async def list_queues(self, call: Call) -> web.Response:
        return reply([self.queue_info(q) for v in self._vhosts(call) for q in v.queues.values()])

    async def get_queue(self, call: Call) -> web.Response:
        return reply(self.queue_info(self.vhost(call.params["vhost"]).queue(call.params["name"])))

    async def queue_bindings(self, call: Call) -> web.Response:
        vhost = self.vhost(call.params["vhost"])
        queue = vhost.queue(call.params["name"])
        return reply([b for b in self.bindings_of(vhost) if b["destination_type"] == "queue"
                      and b["destination"] == queue.name])

    async def put_queue(self, call: Call) -> web.Response:
        body = await call.body()
        vhost = self.vhost(call.params["vhost"])
        name = call.params["name"]
        if not name:
            raise bad_request("a queue needs a name")
        created = name not in vhost.queues  # looked up as given: 201 for a name with CR/LF, as RabbitMQ's API
        vhost.declare_queue(None, name, durable=_bool(body, "durable", True),
                            auto_delete=_bool(body, "auto_delete", False), arguments=_dict(body, "arguments"),
                            access=self.access(call, vhost))
        return reply(None, 201 if created else 204)

    async def delete_queue(self, call: Call) -> web.Response:
        vhost = self.vhost(call.params["vhost"])
        vhost.queue(call.params["name"])  # 404 for a missing queue, as RabbitMQ's API
        vhost.delete_queue(call.params["name"], None, if_unused=call.query_flag("if-unused"),
                           if_empty=call.query_flag("if-empty"), access=self.access(call, vhost))
        return reply(None, 204)

    async def purge_queue(self, call: Call) -> web.Response:
        vhost = self.vhost(call.params["vhost"])
        queue = vhost.queue(call.params["name"])  # 404 first, as RabbitMQ's API (resource_exists)
        self.access(call, vhost).read("queue", queue.name)
        queue.purge()
        await self._durable()
        return reply(None, 204)

    async def get_messages(self, call: Call) -> web.Response:
        body = await call.body()
        vhost = self.vhost(call.params["vhost"])
        try:  # RabbitMQ's API answers a refused get with the channel error's text, before looking the queue up
            self.access(call, vhost).read("queue", call.params["name"])
        except errors.PermissionRefused as exc:
            raise HTTPFailure(401, "not_authorised", f"ACCESS_REFUSED - {exc.text}") from None
        queue = vhost.queue(call.params["name"])
        count = body.get("count", 1)
        if isinstance(count, str) and count.isdigit():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise bad_request("'count' must be a positive integer")
        ackmode = body.get("ackmode", "ack_requeue_true")
        if ackmode not in ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false"):
            raise bad_request(f"unknown ackmode '{ackmode}'")
        encoding = body.get("encoding", "auto")
        if encoding not in ("auto", "base64"):
            raise bad_request("'encoding' must be auto or base64")
        truncate = body.get("truncate")
        if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 0):
            raise bad_request("'truncate' must be a non-negative integer")
        taken: list[Message] = []
        result = []
        tracker, who = self.broker.tracker, f"http {call.user.name}@{call.request.remote}"
        origin = Peer(who, call.user.name)
        for _ in range(count):
            msg = queue.get()
            if msg is None:
                break
            queue.hand_out(msg, ackmode != "ack_requeue_false")  # the one delivery step (core/queue.py)
            taken.append(msg)
            if msg.flags & MESSAGE_ID and tracker is not None:
                tracker.record(vhost.name, msg, "got", queue.name, who, 0, msg.redelivered, True)
            if vhost.tracer is not None:
                vhost.tracer.delivered(queue, msg, origin)
            payload = msg.body if truncate is None else msg.body[:truncate]
            if encoding == "auto":
                try:
                    text, payload_encoding = payload.decode(), "string"
                except UnicodeDecodeError:
                    text, payload_encoding = base64.b64encode(payload).decode(), "base64"
            else:
                text, payload_encoding = base64.b64encode(payload).decode(), "base64"
            result.append({"payload_bytes": len(msg.body), "redelivered": msg.redelivered,
                           "exchange": msg.exchange, "routing_key": msg.routing_key,
                           "message_count": queue.message_count, "properties": msg.properties,
                           "payload": text, "payload_encoding": payload_encoding})
        if tracker is not None:
            for msg in taken:
                if msg.flags & MESSAGE_ID:
                    if ackmode == "ack_requeue_false":
                        tracker.record(vhost.name, msg, "acked", queue.name, who, 0)
                    elif ackmode.endswith("requeue_true"):
                        tracker.record(vhost.name, msg, "requeued", queue.name, "management get", who, 0)
                    else:
                        tracker.record(vhost.name, msg, "rejected", queue.name, False, who, 0)
        if ackmode.endswith("requeue_true"):
            queue.requeue(taken)
        elif ackmode == "reject_requeue_false":
            for msg in taken:
                queue.drop_unacked(msg)
        await self._durable()
        return reply(result)

    # --- exchanges ---------------------------------------------------------------------------------

    async def list_exchanges(self, call: Call) -> web.Response:
        return reply([self.exchange_info(v, e) for v in self._vhosts(call) for e in v.exchanges.values()])

    async def get_exchange(self, call: Call) -> web.Response:
        vhost = self.vhost(call.params["vhost"])
        return reply(self.exchange_info(vhost, vhost.exchange(_exchange_name(call.params["name"]))))

    async def put_exchange(self, call: Call) -> web.Response:
        body = await call.body()
        vhost = self.vhost(call.params["vhost"])
        name = _exchange_name(call.params["name"])
        type_name = body.get("type")
        if not isinstance(type_name, str):
            raise bad_request("'type' is required")
        created = name not in vhost.exchanges
        vhost.declare_exchange(name, type_name, durable=_bool(body, "durable", True),
                               auto_delete=_bool(body, "auto_delete", False), internal=_bool(body, "internal", False),
                               arguments=_dict(body, "arguments"), access=self.access(call, vhost))
        return reply(None, 201 if created else 204)

    async def delete_exchange(self, call: Call) -> web.Response:
        vhost = self.vhost(call.params["vhost"])
        name = _exchange_name(call.params["name"])
        if name:
            vhost.exchange(name)  # 404 for a missing exchange
        vhost.delete_exchange(name, if_unused=call.query_flag("if-unused"), access=self.access(call, vhost))
        return reply(None, 204)

    async def publish(self, call: Call) -> web.Response:
        body = await call.body()
        vhost = self.vhost(call.params["vhost"])
        try:  # RabbitMQ's API answers a refused publish with the channel error, as a bad request
            self.access(call, vhost).write("exchange", _exchange_name(call.params["name"]))
        except errors.PermissionRefused as exc:
            raise bad_request(f"403 ACCESS_REFUSED - {exc.text}") from None
        exchange = vhost.exchange_for_publish(_exchange_name(call.params["name"]))
        routing_key = body.get("routing_key", "")
        payload = body.get("payload", "")
        encoding = body.get("payload_encoding", "string")
        properties = _dict(body, "properties")
        if not isinstance(routing_key, str) or not isinstance(payload, str):
            raise bad_request("'routing_key' and 'payload' must be strings")
        if encoding == "string":
            raw = payload.encode()
        elif encoding == "base64":
            try:
                raw = base64.b64decode(payload, validate=True)
            except ValueError:  # binascii.Error, or a str that is not ASCII
                raise bad_request("payload is not valid base64") from None
        else:
            raise bad_request("'payload_encoding' must be string or base64")
        try:
            header = build_header(properties, len(raw))
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise bad_request(f"invalid properties: {exc}") from None
        msg = Message(exchange.name, routing_key, build_address(exchange.name, routing_key), header, raw)
        try:  # the checks of AMQP's basic.publish (expiration, CC/BCC), answered as a bad request
            validate(msg)
        except errors.PreconditionFailed as exc:
            raise bad_request(f"406 PRECONDITION_FAILED - {exc.text}") from None
        origin = Peer(f"http {call.user.name}@{call.request.remote}", call.user.name)
        routed = vhost.publish(exchange, msg, origin) is not None  # the one publish entry (core/routing.py)
        await self._durable()
        return reply({"routed": routed})

    # --- bindings ----------------------------------------------------------------------------------

    async def list_bindings(self, call: Call) -> web.Response:
        return reply([b for v in self._vhosts(call) for b in self.bindings_of(v)])

    def _between(self, call: Call, strip: bool = False) -> tuple[VHost, list[dict[str, Any]]]:
        """``strip``: CR/LF removed from the names first (a new binding, as RabbitMQ's queue.bind)."""
        vhost = self.vhost(call.params["vhost"])
        kind = {"q": "queue", "e": "exchange"}.get(call.params["kind"])
        if kind is None:
            raise HTTPFailure(404, "Object Not Found", "Not Found")
        clean = strip_crlf if strip else str
        source = _exchange_name(clean(call.params["source"]))
        vhost.exchange(source)
        destination = clean(call.params["destination"])
        if kind == "queue":
            vhost.queue(destination)
        else:
            vhost.exchange(destination)
        return vhost, [b for b in self.bindings_of(vhost) if b["source"] == source
                       and b["destination"] == destination and b["destination_type"] == kind]

    async def list_bindings_between(self, call: Call) -> web.Response:
        return reply(self._between(call)[1])

    async def post_binding(self, call: Call) -> web.Response:
        body = await call.body()
        vhost, _ = self._between(call, strip=True)
        routing_key = body.get("routing_key", "")
        if not isinstance(routing_key, str):
            raise bad_request("'routing_key' must be a string")
        arguments = _dict(body, "arguments")
        source, destination = _exchange_name(call.params["source"]), call.params["destination"]
        if call.params["kind"] == "q":
            vhost.bind_queue(destination, source, routing_key, arguments, None, access=self.access(call, vhost))
        else:
            vhost.bind_exchange(destination, source, routing_key, arguments, access=self.access(call, vhost))
        response = reply(None, 201)
        response.headers["Location"] = properties_key(routing_key, arguments)
        return response

    def _find_binding(self, call: Call) -> dict[str, Any]:
        _, found = self._between(call)
        props = call.params["props"]  # decoded once: the properties key itself (RabbitMQ's tools quote it)
        for binding in found:
            if binding["properties_key"] in (props, quote(props, safe="~")):
                return binding
        raise errors.NotFound("no binding with these properties")

    async def get_binding(self, call: Call) -> web.Response:
        return reply(self._find_binding(call))

    async def delete_binding(self, call: Call) -> web.Response:
        binding = self._find_binding(call)
        vhost = self.vhost(call.params["vhost"])
        if binding["destination_type"] == "queue":
            vhost.unbind_queue(binding["destination"], binding["source"], binding["routing_key"],
                               binding["arguments"], None, access=self.access(call, vhost))
        else:
            vhost.unbind_exchange(binding["destination"], binding["source"], binding["routing_key"],
                                  binding["arguments"], access=self.access(call, vhost))
        return reply(None, 204)

    # --- users and permissions ---------------------------------------------------------------------

    def _user(self, name: str) -> User:
        user = self.broker.users.get(name)
        if user is None:
            raise errors.NotFound(f"no user '{name}'")
        return user

    async def list_users(self, call: Call) -> web.Response:
        return reply([self.user_info(u) for u in self.broker.users.values()])

    async def get_user(self, call: Call) -> web.Response:
        return reply(self.user_info(self._user(call.params["user"])))

    async def put_user(self, call: Call) -> web.Response:
        body = await call.body()
        name = call.params["user"]
        if not name:
            raise bad_request("a user needs a name")
        password_hash = password_hash_of(body, self.broker.users.get(name))
        _, created = self.broker.put_user(name, password_hash, _tags(body.get("tags")))
        return reply(None, 201 if created else 204)

    async def delete_user(self, call: Call) -> web.Response:
        self.broker.delete_user(call.params["user"])
        return reply(None, 204)

    async def user_permissions(self, call: Call) -> web.Response:
        user = self._user(call.params["user"])
        return reply([self.permission_info(user.name, v) for v in sorted(user.vhosts)])

    async def vhost_permissions(self, call: Call) -> web.Response:
        vhost = self.vhost(call.params["vhost"])
        return reply([self.permission_info(u.name, vhost.name) for u in self.broker.users.values()
                      if vhost.name in u.vhosts])

    async def list_permissions(self, call: Call) -> web.Response:
        return reply([self.permission_info(u.name, v) for u in self.broker.users.values() for v in sorted(u.vhosts)])

    async def get_permission(self, call: Call) -> web.Response:
        user = self._user(call.params["user"])
        vhost = self.vhost(call.params["vhost"])
        if vhost.name not in user.vhosts:
            raise errors.NotFound(f"no permissions for user '{user.name}' in vhost '{vhost.name}'")
        return reply(self.permission_info(user.name, vhost.name))

    async def put_permission(self, call: Call) -> web.Response:
        body = await call.body()
        created = self.broker.set_permission(call.params["user"], call.params["vhost"], *permission_patterns(body))
        return reply(None, 201 if created else 204)

    async def delete_permission(self, call: Call) -> web.Response:
        self.broker.clear_permission(call.params["user"], call.params["vhost"])
        return reply(None, 204)

    # --- limits (RabbitMQ's /api/vhost-limits and /api/user-limits) -----------------------------------

    async def list_vhost_limits(self, call: Call) -> web.Response:
        name = call.params.get("vhost")
        vhosts = [self.vhost(name)] if name is not None else sorted(self.broker.vhosts.values(), key=lambda v: v.name)
        return reply([{"vhost": v.name, "value": dict(v.limits)} for v in vhosts if v.limits])

    @staticmethod
    async def _limit_value(call: Call) -> Any:
        body = await call.body()
        if "value" not in body:
            raise bad_request("the body must be {\"value\": <integer>}")
        return body["value"]

    async def put_vhost_limit(self, call: Call) -> web.Response:
        value = await self._limit_value(call)
        self.broker.set_vhost_limits(call.params["vhost"], {call.params["name"]: value}, replace=False)
        return reply(None, 204)

    async def delete_vhost_limit(self, call: Call) -> web.Response:
        self.broker.clear_vhost_limits(call.params["vhost"], call.params["name"])
        return reply(None, 204)

    async def list_user_limits(self, call: Call) -> web.Response:
        name = call.params.get("user")
        users = [self._user(name)] if name is not None else list(self.broker.users.values())
        return reply([{"user": u.name, "value": dict(u.limits)} for u in users if u.limits])

    async def put_user_limit(self, call: Call) -> web.Response:
        value = await self._limit_value(call)
        self.broker.set_user_limits(call.params["user"], {call.params["name"]: value})
        return reply(None, 204)

    async def delete_user_limit(self, call: Call) -> web.Response:
        self.broker.clear_user_limits(call.params["user"], call.params["name"])
        return reply(None, 204)

    # --- policies ----------------------------------------------------------------------------------

    async def list_policies(self, call: Call) -> web.Response:
        return reply([self.policy_info(p) for v in self._vhosts(call) for p in v.policies.values()])

    async def get_policy(self, call: Call) -> web.Response:
        vhost = self.vhost(call.params["vhost"])
        policy = vhost.policies.get(call.params["name"])
        if policy is None:
            raise errors.NotFound(f"no policy '{call.params['name']}' in vhost '{vhost.name}'")
        return reply(self.policy_info(policy))

    async def put_policy(self, call: Call) -> web.Response:
        body = await call.body()
        vhost = self.vhost(call.params["vhost"])
        policy = policy_from(body, vhost.name, call.params["name"])
        created = policy.name not in vhost.policies
        self.broker.set_policy(policy)
        return reply(None, 201 if created else 204)

    async def delete_policy(self, call: Call) -> web.Response:
        self.broker.clear_policy(call.params["vhost"], call.params["name"])
        return reply(None, 204)

    # --- definitions -------------------------------------------------------------------------------

    async def get_definitions(self, call: Call) -> web.Response:
        response = reply(definitions.export(self))
        name = call.request.query.get("download")
        if name:  # the name as given (RFC 6266 filename*) and a plain ASCII fallback: no header injection
            plain = re.sub(r'[^\x20-\x7e]|["\\]', "_", name)
            response.headers["Content-Disposition"] = \
                f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"
        return response

    async def post_definitions(self, call: Call) -> web.Response:
        self.import_definitions(await call.body())
        return reply(None, 204)

    def import_definitions(self, body: dict[str, Any]) -> None:
        """Import a definitions document (HTTP and ``leveret ctl``): one ``definitions.import`` audit entry, and
        each change it makes is audited with the importer as a ``definitions`` actor."""
        actor = {**audit.actor(), "via": "definitions"}
        self.broker.audit.record("definitions.import", sections=sorted(k for k, v in body.items()
                                                                       if isinstance(v, list) and v))
        with audit.acting(actor):
            definitions.import_(self, body)

    # --- nodes -------------------------------------------------------------------------------------

    def node_info(self) -> dict[str, Any]:
        memory = self.broker.memory
        return {"name": self.broker.node_name, "type": "disc", "running": True, "mem_used": process_rss(),
                "mem_limit": memory.high, "mem_alarm": memory.memory_alarm, "disk_free_alarm": memory.disk_alarm,
                "partitions": [], "os_pid": str(os.getpid()), "being_drained": False}

    async def list_nodes(self, call: Call) -> web.Response:
        return reply([self.node_info()])

    async def get_node(self, call: Call) -> web.Response:
        if call.params["node"] != self.broker.node_name:
            raise errors.NotFound(f"no node '{call.params['node']}'")
        return reply(self.node_info())

    # --- connections, channels, consumers (read only) -------------------------------------------------

    def _amqp_address(self) -> str:
        for listener in self.listeners():
            if listener.get("protocol") == "amqp":
                return f"{listener['ip_address']}:{listener['port']}"
        return "?"

    def open_sessions(self, vhost: str | None = None) -> list[Session]:
        """The logged-in client connections with a vhost open (of ``vhost`` only, when given: NotFound if it
        does not exist), as the API and ``leveret ctl`` list them."""
        if vhost is not None:
            self.vhost(vhost)
        return [s for s in self.sessions() if s.user is not None and _session_vhost(s) is not None
                and (vhost is None or _session_vhost(s) == vhost)]

    def connection_info(self, session: Session, address: str) -> dict[str, Any]:
        host, _, port = session.peer.rpartition(":")
        return {"name": connection_name(session, address), "node": self.broker.node_name, "type": "network",
                "protocol": "AMQP 0-9-1", "user": session.user.name if session.user else "",
                "vhost": _session_vhost(session) or "", "channels": len(session.channels),
                "state": "running" if session.writable else "flow", "peer_host": host,
                "peer_port": int(port) if port.isdigit() else 0, **session.details}

    @staticmethod
    def _sees(call: Call, session: Session) -> bool:
        """RabbitMQ's rule for connections and channels: administrators and monitoring users see all of them,
        other management users their own only."""
        if {"administrator", "monitoring"} & set(call.user.tags):
            return True
        return session.user is not None and session.user.name == call.user.name

    def _visible_sessions(self, call: Call) -> list[Session]:
        return [s for s in self.open_sessions(call.params.get("vhost")) if self._sees(call, s)]

    async def list_connections(self, call: Call) -> web.Response:
        address = self._amqp_address()
        return reply([self.connection_info(s, address) for s in self._visible_sessions(call)])

    def find_connection(self, name: str) -> Session:
        """The open client connection called ``name`` (as listed: ``peer -> listener``); NotFound otherwise."""
        address = self._amqp_address()
        for session in self.open_sessions():
            if connection_name(session, address) == name:
                return session
        raise errors.NotFound(f"no connection '{name}'")

    async def get_connection(self, call: Call) -> web.Response:
        session = self.find_connection(call.params["name"])
        if not self._sees(call, session):
            raise HTTPFailure(401, "not_authorised", "User not authorised to access object")
        return reply(self.connection_info(session, self._amqp_address()))

    async def delete_connection(self, call: Call) -> web.Response:
        """RabbitMQ's force-close: the client gets 320 CONNECTION_FORCED with the ``X-Reason`` header's text.
        An administrator may close any connection, other management users their own only (as RabbitMQ)."""
        session = self.find_connection(call.params["name"])
        if "administrator" not in call.user.tags and (session.user is None or session.user.name != call.user.name):
            raise HTTPFailure(401, "not_authorised", "User not authorised to access object")
        reason = call.request.headers.get("X-Reason") or CLOSE_REASON
        reason = reason.encode(errors="surrogateescape").decode(errors="replace")  # bytes that were not UTF-8
        log.info("closing connection '%s' on request of user '%s': %s", call.params["name"], call.user.name, reason)
        session.force_close(reason)
        return reply(None, 204)

    async def list_channels(self, call: Call) -> web.Response:
        address = self._amqp_address()
        found = []
        for session in self._visible_sessions(call):
            connection = self.connection_info(session, address)
            for channel in session.channels.values():
                found.append({"name": f"{connection['name']} ({channel.number})", "number": channel.number,
                              "connection_details": {"name": connection["name"], "peer_host": connection["peer_host"],
                                                     "peer_port": connection["peer_port"]},
                              "user": connection["user"], "vhost": connection["vhost"], "node": self.broker.node_name,
                              "confirm": channel.confirm, "transactional": channel.tx is not None,
                              "prefetch_count": channel.prefetch, "global_prefetch_count": channel.global_prefetch,
                              "consumer_count": len(channel.consumers), "messages_unacknowledged": len(channel.unacked),
                              "state": "running"})
        return reply(found)

    async def list_consumers(self, call: Call) -> web.Response:
        address = self._amqp_address()
        found = []
        for vhost in self._vhosts(call):
            for queue in vhost.queues.values():
                for consumer in queue.consumers:
                    session = consumer.channel.session
                    connection = self.connection_info(session, address)
                    found.append({"consumer_tag": consumer.tag, "queue": {"name": queue.name, "vhost": vhost.name},
                                  "channel_details": {"name": f"{connection['name']} ({consumer.channel.number})",
                                                      "number": consumer.channel.number,
                                                      "connection_name": connection["name"],
                                                      "peer_host": connection["peer_host"],
                                                      "peer_port": connection["peer_port"], "user": connection["user"]},
                                  "ack_required": not consumer.no_ack, "exclusive": consumer.exclusive,
                                  "prefetch_count": consumer.prefetch, "arguments": consumer.arguments,
                                  "active": True, "activity_status": "up"})
        return reply(found)

    # --- message tracking -------------------------------------------------------------------------

    async def get_tracking(self, call: Call) -> web.Response:
        """What happened to the messages with this message_id (Leveret's own, docs/operations.md)."""
        vhost = self.vhost(call.params["vhost"])
        tracker = self.broker.tracker
        if tracker is None:
            raise bad_request("message tracking is off (tracking_window or tracking_max_events is 0)")
        return reply(tracker.events_or_raise(vhost.name, call.params["message_id"]))

    # --- task status (the status book, core/status.py) ---------------------------------------------

    async def get_task_status(self, call: Call) -> web.Response:
        """The status record of a task id (Leveret's status book, docs/extensions.md)."""
        vhost = self.vhost(call.params["vhost"])
        task_id = call.params["id"]
        answered: asyncio.Future[tuple[Any, BaseException | None]] = asyncio.get_running_loop().create_future()

        def done(records: Any, exc: BaseException | None) -> None:
            if not answered.done():
                answered.set_result((records, exc))

        self.broker.status.lookup(vhost.name, [task_id], done)
        records, exc = await answered
        if exc is not None:
            raise HTTPFailure(503, "store_failed", f"reading the status record failed: {exc}")
        record = records.get(task_id)
        if record is None:
            raise HTTPFailure(404, "not_found", f"no status record for task '{task_id}' in vhost '{vhost.name}' "
                                                "(unknown, or expired)")
        return reply(record.public())

    # --- health ------------------------------------------------------------------------------------

    async def aliveness(self, call: Call) -> web.Response:
        """RabbitMQ's aliveness test: declare ``aliveness-test``, publish a message to it and get it back."""
        vhost = self.vhost(call.params["vhost"])
        queue = vhost.declare_queue(None, "aliveness-test")
        body = b"test_message"
        msg = Message("", queue.name, build_address("", queue.name), build_header({}, len(body)), body)
        vhost.publish(vhost.exchange(""), msg)
        got = queue.get()
        if got is None:
            return reply({"status": "failed", "reason": "the test message did not come back"}, 503)
        queue.settle(got)
        return reply({"status": "ok"})

    async def alarms(self, call: Call) -> web.Response:
        memory = self.broker.memory
        if not memory.alarm:
            return reply({"status": "ok"})
        alarms = [{"node": self.broker.node_name, "resource": resource}
                  for resource, on in (("memory", memory.memory_alarm), ("disk", memory.disk_alarm)) if on]
        return reply({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                      "alarms": alarms}, 503)


def connection_name(session: Session, amqp_address: str) -> str:
    """A connection's name in the API, as RabbitMQ's: ``"127.0.0.1:50812 -> 127.0.0.1:5672"``, with the listener
    it came in on (the AMQPS one for a TLS connection)."""
    if "port" in session.details:
        amqp_address = f"{session.details['host']}:{session.details['port']}"
    return f"{session.peer} -> {amqp_address}"


def _session_vhost(session: Session) -> str | None:
    """The vhost a connection has open; None before connection.open."""
    try:
        return session.vhost.name
    except errors.NotAllowed:
        return None


def password_hash_of(body: dict[str, Any], existing: User | None) -> str:
    """The password hash a user PUT or a definitions entry asks for: ``password`` (hashed here) or
    ``password_hash`` (RabbitMQ's sha256 format, stored as given); neither keeps an existing user's."""
    algorithm = body.get("hashing_algorithm", HASHING_ALGORITHM)
    if algorithm != HASHING_ALGORITHM:
        raise bad_request(f"unsupported hashing_algorithm '{algorithm}'; only {HASHING_ALGORITHM} is supported")
    if "password" in body:
        if not isinstance(body["password"], str):
            raise bad_request("'password' must be a string")
        if not body["password"]:
            raise bad_request("'password' must not be empty (a blank password never logs in; "
                              "\"password_hash\": \"\" makes a user without password login)")
        return hash_password(body["password"])
    if "password_hash" in body:
        value = body["password_hash"]
        if not isinstance(value, str):
            raise bad_request("'password_hash' must be a string")
        if value:
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:  # binascii.Error, or a str that is not ASCII
                raise bad_request("'password_hash' is not base64") from None
            if len(raw) != 36:
                raise bad_request("'password_hash' is not a rabbit_password_hashing_sha256 hash")
        return value
    if existing is not None:
        return existing.password_hash
    raise bad_request("a new user needs 'password' or 'password_hash'")


def permission_patterns(body: dict[str, Any]) -> tuple[str, str, str]:
    """The configure, write and read regular expressions of a permissions body (``.*`` where absent)."""
    patterns = []
    for key in ("configure", "write", "read"):
        value = body.get(key, ".*")
        if not isinstance(value, str):
            raise bad_request(f"'{key}' must be a regular expression")
        try:
            re.compile(value)
        except re.error as exc:
            raise bad_request(f"'{key}' is not a valid regular expression: {exc}") from None
        patterns.append(value)
    return patterns[0], patterns[1], patterns[2]


def policy_from(body: dict[str, Any], vhost: str, name: str) -> Policy:
    pattern = body.get("pattern")
    if not isinstance(pattern, str):
        raise bad_request("'pattern' is required")
    definition = body.get("definition")
    if not isinstance(definition, dict):
        raise bad_request("'definition' must be a JSON object")
    priority = body.get("priority", 0)
    if isinstance(priority, str) and priority.lstrip("-").isdigit():
        priority = int(priority)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise bad_request("'priority' must be an integer")
    apply_to = body.get("apply-to", body.get("apply_to", "all"))
    if not isinstance(apply_to, str):
        raise bad_request("'apply-to' must be queues, exchanges or all")
    return Policy(vhost, name, pattern, dict(definition), priority, apply_to)
