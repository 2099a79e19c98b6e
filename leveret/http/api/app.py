"""The management HTTP API's application: the route table and the one entry point every ``/api/`` request
goes through (authenticate, route, authorise, call the handler, translate errors), plus ``/metrics``.

The route table below is the API's one list of endpoints: each row names its handler in the module of its
resource (overview.py, connections.py, vhosts.py, users.py, limits.py, queues.py, exchanges.py, bindings.py,
messages.py, policies.py, definitions.py, tracking.py). Core errors become HTTP answers once, here, through
leveret/errormap.py (the table the control socket uses too).
"""

from __future__ import annotations

import logging

from aiohttp import web

from leveret import errormap
from leveret.core import audit, errors
from leveret.management.context import Management, may_see_all
from leveret.management.validation import HTTPFailure, not_authorised

from .. import tasks_view
from .. import web as web_page
from . import (
    bindings,
    connections,
    definitions,
    exchanges,
    limits,
    messages,
    overview,
    policies,
    queues,
    tracking,
    users,
    vhosts,
)
from .auth import authenticate, authorise
from .call import Call, reply
from .routing import Handler, Route, match

log = logging.getLogger("leveret.http")


class ManagementAPI:
    """The routes and handlers over one broker's ``management`` side (which also knows the open client
    connections and the listeners; its history's samples are run by the server, leveret/http/server.py).
    ``metrics_auth``: /metrics asks for the login of a user tagged ``monitoring`` or ``administrator`` (off:
    open, as RabbitMQ's plugin)."""

    def __init__(self, management: Management, *, metrics_auth: bool = False) -> None:
        self.management = management
        self.metrics_auth = metrics_auth
        self.routes: list[Route] = []
        r = self._route
        r("GET", "overview", overview.overview)
        r("GET", "whoami", overview.whoami)
        r("GET", "vhosts", vhosts.list_vhosts)
        r("GET", "vhosts/{vhost}", vhosts.get_vhost)
        r("PUT", "vhosts/{vhost}", vhosts.put_vhost, "admin")
        r("DELETE", "vhosts/{vhost}", vhosts.delete_vhost, "admin")
        r("GET", "queues", queues.list_queues)
        r("GET", "queues/{vhost}", queues.list_queues)
        r("GET", "queues/{vhost}/{name}", queues.get_queue)
        r("PUT", "queues/{vhost}/{name}", queues.put_queue, "vhost")
        r("DELETE", "queues/{vhost}/{name}", queues.delete_queue, "vhost")
        r("DELETE", "queues/{vhost}/{name}/contents", queues.purge_queue, "vhost")
        r("POST", "queues/{vhost}/{name}/get", messages.get_messages, "vhost")
        r("POST", "queues/{vhost}/{name}/actions", messages.queue_action, "vhost")
        r("GET", "queues/{vhost}/{name}/bindings", queues.queue_bindings)
        r("GET", "exchanges", exchanges.list_exchanges)
        r("GET", "exchanges/{vhost}", exchanges.list_exchanges)
        r("GET", "exchanges/{vhost}/{name}", exchanges.get_exchange)
        r("PUT", "exchanges/{vhost}/{name}", exchanges.put_exchange, "vhost")
        r("DELETE", "exchanges/{vhost}/{name}", exchanges.delete_exchange, "vhost")
        r("POST", "exchanges/{vhost}/{name}/publish", messages.publish, "vhost")
        r("GET", "bindings", bindings.list_bindings)
        r("GET", "bindings/{vhost}", bindings.list_bindings)
        r("GET", "bindings/{vhost}/e/{source}/{kind}/{destination}", bindings.list_bindings_between)
        r("POST", "bindings/{vhost}/e/{source}/{kind}/{destination}", bindings.post_binding, "vhost")
        r("GET", "bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", bindings.get_binding)
        r("DELETE", "bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", bindings.delete_binding, "vhost")
        r("GET", "users", users.list_users, "admin")
        r("GET", "users/{user}", users.get_user, "admin")
        r("PUT", "users/{user}", users.put_user, "admin")
        r("DELETE", "users/{user}", users.delete_user, "admin")
        r("GET", "users/{user}/permissions", users.user_permissions, "admin")
        r("GET", "permissions", users.list_permissions, "admin")
        r("GET", "permissions/{vhost}/{user}", users.get_permission, "admin")
        r("PUT", "permissions/{vhost}/{user}", users.put_permission, "admin")
        r("DELETE", "permissions/{vhost}/{user}", users.delete_permission, "admin")
        r("GET", "vhosts/{vhost}/permissions", users.vhost_permissions, "admin")
        r("GET", "vhost-limits", limits.list_vhost_limits, "admin")
        r("GET", "vhost-limits/{vhost}", limits.list_vhost_limits, "admin")
        r("PUT", "vhost-limits/{vhost}/{name}", limits.put_vhost_limit, "admin")
        r("DELETE", "vhost-limits/{vhost}/{name}", limits.delete_vhost_limit, "admin")
        r("GET", "user-limits", limits.list_user_limits, "admin")
        r("GET", "user-limits/{user}", limits.list_user_limits, "admin")
        r("PUT", "user-limits/{user}/{name}", limits.put_user_limit, "admin")
        r("DELETE", "user-limits/{user}/{name}", limits.delete_user_limit, "admin")
        r("GET", "policies", policies.list_policies)
        r("GET", "policies/{vhost}", policies.list_policies)
        r("GET", "policies/{vhost}/{name}", policies.get_policy)
        r("PUT", "policies/{vhost}/{name}", policies.put_policy, "policy")
        r("DELETE", "policies/{vhost}/{name}", policies.delete_policy, "policy")
        r("GET", "definitions", definitions.get_definitions, "admin")
        r("POST", "definitions", definitions.post_definitions, "admin")
        r("GET", "nodes", overview.list_nodes)
        r("GET", "nodes/{node}", overview.get_node)
        r("GET", "connections", connections.list_connections)
        r("GET", "connections/{name}", connections.get_connection)
        r("DELETE", "connections/{name}", connections.delete_connection)
        r("GET", "vhosts/{vhost}/connections", connections.list_connections)
        r("GET", "channels", connections.list_channels)
        r("GET", "vhosts/{vhost}/channels", connections.list_channels)
        r("GET", "consumers", connections.list_consumers)
        r("GET", "consumers/{vhost}", connections.list_consumers)
        r("GET", "aliveness-test/{vhost}", overview.aliveness)
        r("GET", "health/checks/alarms", overview.alarms)
        r("GET", "openapi.json", overview.openapi_description)
        r("GET", "tracking/{vhost}/{message_id}", tracking.get_tracking)
        r("GET", "task-status/{vhost}/{id}", tracking.get_task_status)
        r("GET", "tasks/{vhost}", tasks_view.list_tasks)

    def _route(self, method: str, path: str, handler: Handler, level: str = "read") -> None:
        self.routes.append(Route(method, tuple(path.split("/")), handler, level))

    def app(self) -> web.Application:
        application = web.Application(client_max_size=64 * 1024 * 1024)
        application.router.add_route("*", r"/api/{tail:[\s\S]*}", self._handle)  # any byte, newlines too
        application.router.add_route("*", "/api", self._handle)
        application.router.add_get("/metrics", self._metrics)
        web_page.add_routes(application)
        return application

    async def _handle(self, request: web.Request) -> web.Response:
        """The one entry point: authentication, routing, authorisation, error translation."""
        try:
            user = authenticate(self.management.broker, request)
            route, params = match(self.routes, request)
            authorise(user, route.level, params.get("vhost"))
            audit.set_actor({"via": "http", "user": user.name, "address": request.remote})  # this request's task
            return await route.handler(self.management, Call(request, user, params))
        except HTTPFailure as exc:
            response = reply({"error": exc.error, "reason": exc.reason}, exc.status)
            if exc.status == 401 and request.headers.get("X-Requested-With") != "XMLHttpRequest":
                # not for the web page's requests: a browser would open its own login dialog over the page's
                response.headers["WWW-Authenticate"] = 'Basic realm="RabbitMQ Management"'
            return response
        except errors.BrokerError as exc:
            refusal = errormap.refusal(exc)
            return reply({"error": refusal.error, "reason": refusal.reason}, refusal.status)
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("management API: %s %s failed", request.method, request.path)
            return reply({"error": "internal_error", "reason": f"{type(exc).__name__}: {exc}"}, 500)

    async def _metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics`` (Prometheus): with ``metrics_auth``, for monitoring users and administrators only."""
        management = self.management
        if self.metrics_auth:
            try:
                if not may_see_all(authenticate(management.broker, request)):
                    raise not_authorised("Not monitor user")
            except HTTPFailure as exc:
                response = reply({"error": exc.error, "reason": exc.reason}, exc.status)
                response.headers["WWW-Authenticate"] = 'Basic realm="Leveret metrics"'
                return response
        from ..metrics import render_metrics  # prometheus_client (~1 MiB) once /metrics is first asked for

        body, content_type = render_metrics(management.broker, management.sessions())
        return web.Response(body=body, headers={"Content-Type": content_type})
