"""The control socket: how ``leveret ctl`` talks to a running broker (as rabbitmqctl talks to RabbitMQ).

A Unix socket in the data directory (``<data_dir>/leveret.sock``, owner-only) that takes one JSON object per
line, ``{"command": ..., "args": {...}}``, and answers one line, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "...", "status": 404}``. Core errors are translated here, once, through the table
the management API uses too (``leveret/errormap.py``).

Listings are the management API's own records (``leveret/management/views.py``), lookups and waits its
:class:`~leveret.management.context.Management`, and changes go through the same core calls and body
validators (``leveret/management/validation.py``) as the API's handlers, so ``leveret ctl`` and ``/api/...``
cannot drift apart (nothing here imports ``leveret.http``: server/ and http/ are siblings). Whoever can open
the socket (the broker's Unix user) is an administrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret import errormap
from leveret.config import socket_path
from leveret.core import audit, errors
from leveret.core.policies import Policy
from leveret.core.tracing import TRACE_EXCHANGE, set_tracing
from leveret.management import definitions, views
from leveret.management.context import Management
from leveret.management.validation import HTTPFailure, exchange_name, parse_tags, password_hash_of, permission_patterns

if TYPE_CHECKING:
    from leveret.core.broker import VHost
    from leveret.core.exchanges import Exchange
    from leveret.core.queue import Queue
    from leveret.node import Node as Server

log = logging.getLogger("leveret.control")


class ControlServer:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.path = socket_path(server.config.data_dir)
        self._server: asyncio.base_events.Server | None = None
        self.management = Management(server.broker, sessions=server.sessions, listeners=server.listeners)
        self.commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            "status": self._status,
            "set_policy": self._set_policy,
            "clear_policy": self._clear_policy,
            "list_policies": self._list_policies,
            "list_queues": self._list_queues,
            "set_vhost_limits": self._set_vhost_limits,
            "clear_vhost_limits": self._clear_vhost_limits,
            "list_vhost_limits": self._list_vhost_limits,
            "set_user_limits": self._set_user_limits,
            "clear_user_limits": self._clear_user_limits,
            "list_user_limits": self._list_user_limits,
            "declare_queue": self._declare_queue,
            "delete_queue": self._delete_queue,
            "purge_queue": self._purge_queue,
            "list_exchanges": self._list_exchanges,
            "declare_exchange": self._declare_exchange,
            "delete_exchange": self._delete_exchange,
            "list_bindings": self._list_bindings,
            "bind": self._bind,
            "unbind": self._unbind,
            "list_connections": self._list_connections,
            "close_connection": self._close_connection,
            "list_users": self._list_users,
            "add_user": self._add_user,
            "delete_user": self._delete_user,
            "change_password": self._change_password,
            "set_user_tags": self._set_user_tags,
            "list_permissions": self._list_permissions,
            "set_permissions": self._set_permissions,
            "clear_permissions": self._clear_permissions,
            "list_vhosts": self._list_vhosts,
            "add_vhost": self._add_vhost,
            "delete_vhost": self._delete_vhost,
            "export_definitions": self._export_definitions,
            "import_definitions": self._import_definitions,
            "trace_on": self._trace_on,
            "trace_off": self._trace_off,
            "track": self._track,
        }

    async def start(self) -> None:
        if len(str(self.path)) > 100:  # AF_UNIX paths are limited to about 108 bytes
            log.warning("no control socket: its path %s is too long; use a shorter --data-dir", self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                           limit=64 * 1024 * 1024)
        finally:
            os.umask(old)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        audit.set_actor(_peer(writer))  # this client's task: the author of the changes it asks for
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self.handle(line), default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = self.commands.get(request.get("command"))
            if command is None:
                return {"ok": False, "status": 400, "error": f"unknown command {request.get('command')!r}; "
                        f"known: {', '.join(sorted(self.commands))}"}
            result = command(request.get("args") or {})
            if inspect.isawaitable(result):
                result = await result
            return {"ok": True, "result": result}
        except errors.BrokerError as exc:
            refusal = errormap.refusal(exc)
            return {"ok": False, "status": refusal.status, "error": refusal.reason}
        except HTTPFailure as exc:
            return {"ok": False, "status": exc.status, "error": exc.reason}
        except KeyError as exc:
            return {"ok": False, "status": 400, "error": f"bad request: missing argument {exc}"}
        except (ValueError, TypeError, AttributeError) as exc:
            return {"ok": False, "status": 400, "error": f"bad request: {exc}"}
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("control command failed: %r", line[:200])
            return {"ok": False, "status": 500, "error": f"internal error: {type(exc).__name__}: {exc}"}

    # --- helpers -----------------------------------------------------------------------------------

    def _vhosts(self, args: dict[str, Any]) -> list[VHost]:
        """The vhost named in ``args`` (NotFound if it does not exist), or every vhost."""
        name = args.get("vhost")
        if name:
            return [self.management.vhost(name)]
        return [self.server.broker.vhosts[n] for n in sorted(self.server.broker.vhosts)]

    def _vhost(self, args: dict[str, Any]) -> VHost:
        return self.management.vhost(args.get("vhost") or "/")

    def _queue(self, args: dict[str, Any]) -> Queue:
        return self._vhost(args).queue(args["name"])

    def _exchange(self, args: dict[str, Any]) -> Exchange:
        return self._vhost(args).exchange(exchange_name(args["name"]))

    # --- commands ----------------------------------------------------------------------------------

    def _set_vhost_limits(self, args: dict[str, Any]) -> dict[str, int]:
        """Replaces the vhost's limits (as rabbitmqctl set_vhost_limits)."""
        return self.server.broker.set_vhost_limits(args.get("vhost", "/"), args["limits"])

    def _clear_vhost_limits(self, args: dict[str, Any]) -> str:
        vhost, name = args.get("vhost", "/"), args.get("name")
        self.server.broker.clear_vhost_limits(vhost, None if name in (None, "all") else name)
        return f"limits of vhost '{vhost}' cleared"

    def _list_vhost_limits(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        vhosts = self.server.broker.vhosts
        names = [args["vhost"]] if args.get("vhost") else sorted(vhosts)
        return [{"vhost": name, "limits": json.dumps(vhosts[name].limits)} for name in names
                if name in vhosts and vhosts[name].limits]

    def _set_user_limits(self, args: dict[str, Any]) -> dict[str, int]:
        """Merged with the user's other limits (as rabbitmqctl set_user_limits)."""
        return self.server.broker.set_user_limits(args["user"], args["limits"])

    def _clear_user_limits(self, args: dict[str, Any]) -> str:
        user, name = args["user"], args.get("name")
        self.server.broker.clear_user_limits(user, None if name in (None, "all") else name)
        if name in (None, "all"):
            return f"limits of user '{user}' cleared"
        return f"limit '{name}' of user '{user}' cleared"

    def _list_user_limits(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        users = self.server.broker.users
        names = [args["user"]] if args.get("user") else list(users)
        return [{"user": name, "limits": json.dumps(users[name].limits)} for name in names
                if name in users and users[name].limits]

    def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        broker = self.server.broker
        return {"node": broker.node_name, "port": self.server.port, "connections": len(self.server.sessions()),
                "vhosts": sorted(broker.vhosts), "memory_used": broker.memory.used, "alarm": broker.memory.alarm,
                "tracing": sorted(v.name for v in broker.vhosts.values() if v.tracer is not None),
                "tracking": broker.tracker.describe() if broker.tracker is not None else "off"}

    def _set_policy(self, args: dict[str, Any]) -> str:
        definition = args["definition"]
        if isinstance(definition, str):
            definition = json.loads(definition)
        policy = Policy(vhost=args.get("vhost", "/"), name=args["name"], pattern=args["pattern"],
                        definition=definition, priority=int(args.get("priority", 0)),
                        apply_to=args.get("apply_to", "all"))
        self.server.broker.set_policy(policy)
        log.info("policy '%s' set in vhost '%s': %s", policy.name, policy.vhost, definition)
        return f"policy '{policy.name}' set"

    def _clear_policy(self, args: dict[str, Any]) -> str:
        self.server.broker.clear_policy(args.get("vhost", "/"), args["name"])
        return f"policy '{args['name']}' cleared"

    def _list_policies(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [views.policy_info(p) for v in self._vhosts(args) for p in v.policies.values()]

    # queues

    def _list_queues(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        management = self.management
        return [views.queue_info(q, management.node, management.rates) for v in self._vhosts(args)
                for q in v.queues.values()]

    def _declare_queue(self, args: dict[str, Any]) -> str:
        vhost = self._vhost(args)
        created = args["name"] not in vhost.queues
        vhost.declare_queue(None, args["name"], durable=bool(args.get("durable", True)),
                            auto_delete=bool(args.get("auto_delete", False)), arguments=args.get("arguments") or {})
        return f"queue '{args['name']}' {'declared' if created else 'exists (same settings)'}"

    def _delete_queue(self, args: dict[str, Any]) -> str:
        vhost = self._vhost(args)
        vhost.queue(args["name"])  # a missing queue is an error here, as in the HTTP API
        count = vhost.delete_queue(args["name"], None, if_unused=bool(args.get("if_unused")),
                                   if_empty=bool(args.get("if_empty")))
        return f"queue '{args['name']}' deleted ({count} messages)"

    async def _purge_queue(self, args: dict[str, Any]) -> str:
        count = await self.management.purge(self._queue(args))  # another node's queue: purged there
        return f"queue '{args['name']}' purged ({count} messages)"

    # exchanges

    def _list_exchanges(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [views.exchange_info(v, e) for v in self._vhosts(args) for e in v.exchanges.values()]

    def _declare_exchange(self, args: dict[str, Any]) -> str:
        vhost = self._vhost(args)
        created = args["name"] not in vhost.exchanges
        vhost.declare_exchange(args["name"], args["type"], durable=bool(args.get("durable", True)),
                               auto_delete=bool(args.get("auto_delete", False)),
                               internal=bool(args.get("internal", False)), arguments=args.get("arguments") or {})
        return f"exchange '{args['name']}' {'declared' if created else 'exists (same settings)'}"

    def _delete_exchange(self, args: dict[str, Any]) -> str:
        exchange = self._exchange(args)  # a missing exchange is an error here, as in the HTTP API
        self._vhost(args).delete_exchange(exchange.name, if_unused=bool(args.get("if_unused")))
        return f"exchange '{args['name']}' deleted"

    # bindings

    def _list_bindings(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [b for v in self._vhosts(args) for b in views.bindings_of(v)]

    def _binding_args(self, args: dict[str, Any]) -> tuple[VHost, str, str, str, str, dict[str, Any]]:
        vhost = self._vhost(args)
        kind = args.get("destination_type", "queue")
        if kind not in ("queue", "exchange"):
            raise errors.PreconditionFailed(f"destination type must be queue or exchange, not '{kind}'")
        source, destination = args["source"], args["destination"]
        vhost.exchange(source)
        if kind == "queue":
            vhost.queue(destination)
        else:
            vhost.exchange(destination)
        return vhost, source, kind, destination, args.get("routing_key", ""), args.get("arguments") or {}

    def _bind(self, args: dict[str, Any]) -> str:
        vhost, source, kind, destination, key, arguments = self._binding_args(args)
        if kind == "queue":
            vhost.bind_queue(destination, source, key, arguments, None)
        else:
            vhost.bind_exchange(destination, source, key, arguments)
        return f"bound {kind} '{destination}' to exchange '{source}' with routing key '{key}'"

    def _unbind(self, args: dict[str, Any]) -> str:
        vhost, source, kind, destination, key, arguments = self._binding_args(args)
        exchange = vhost.exchange(source)
        target = vhost.queue(destination) if kind == "queue" else vhost.exchange(destination)
        if not exchange.has_binding(target, key, arguments):
            raise errors.NotFound(f"no binding from exchange '{source}' to {kind} '{destination}' with routing "
                                  f"key '{key}'{' and these arguments' if arguments else ''} in vhost "
                                  f"'{vhost.name}'")
        if kind == "queue":
            vhost.unbind_queue(destination, source, key, arguments, None)
        else:
            vhost.unbind_exchange(destination, source, key, arguments)
        return f"unbound {kind} '{destination}' from exchange '{source}' (routing key '{key}')"

    # connections

    def _list_connections(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        management = self.management
        address = management.amqp_address()
        return [views.connection_info(s, address, management.node, management.rates)
                for s in management.open_sessions(args.get("vhost") or None)]

    def _close_connection(self, args: dict[str, Any]) -> str:
        session = self.management.find_connection(args["name"])
        reason = str(args.get("reason") or "Closed via leveret ctl")
        log.info("closing connection '%s' on request of leveret ctl: %s", args["name"], reason)
        session.force_close(reason)
        return f"connection '{args['name']}' closed"

    # users

    def _list_users(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [views.user_info(u) for u in self.server.broker.users.values()]

    def _add_user(self, args: dict[str, Any]) -> str:
        name = args["name"]
        if not name:
            raise errors.PreconditionFailed("a user needs a name")
        if name in self.server.broker.users:
            raise errors.PreconditionFailed(f"user '{name}' already exists")
        self._put_user(name, {"password": args["password"], "tags": args.get("tags") or ""})
        return f"user '{name}' added"

    def _put_user(self, name: str, body: dict[str, Any]) -> None:
        password_hash = password_hash_of(body, self.server.broker.users.get(name))
        self.server.broker.put_user(name, password_hash, parse_tags(body.get("tags")))

    def _delete_user(self, args: dict[str, Any]) -> str:
        self.server.broker.delete_user(args["name"])
        return f"user '{args['name']}' deleted"

    def _change_password(self, args: dict[str, Any]) -> str:
        user = self.management.user(args["name"])
        self._put_user(user.name, {"password": args["password"], "tags": list(user.tags)})
        return f"password of user '{user.name}' changed"

    def _set_user_tags(self, args: dict[str, Any]) -> str:
        self.management.user(args["name"])
        self._put_user(args["name"], {"tags": args.get("tags") or []})
        tags = self.server.broker.users[args["name"]].tags
        return f"tags of user '{args['name']}' set to [{', '.join(tags)}]"

    # permissions

    def _list_permissions(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        vhost, user = args.get("vhost"), args.get("user")
        if vhost:
            self.management.vhost(vhost)
        if user:
            self.management.user(user)
        return [views.permission_info(u, v) for u in self.server.broker.users.values()
                if not user or u.name == user for v in sorted(u.vhosts) if not vhost or v == vhost]

    def _set_permissions(self, args: dict[str, Any]) -> str:
        patterns = permission_patterns(args)
        vhost = args.get("vhost") or "/"
        self.server.broker.set_permission(args["user"], vhost, *patterns)
        return f"permissions of user '{args['user']}' in vhost '{vhost}' set"

    def _clear_permissions(self, args: dict[str, Any]) -> str:
        vhost = args.get("vhost") or "/"
        self.management.user(args["user"])
        self.server.broker.clear_permission(args["user"], vhost)
        return f"permissions of user '{args['user']}' in vhost '{vhost}' cleared"

    # vhosts

    def _list_vhosts(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [views.vhost_info(v) for v in self._vhosts({})]

    def _add_vhost(self, args: dict[str, Any]) -> str:
        name = args["name"]
        if not name:
            raise errors.PreconditionFailed("a vhost needs a name")
        if name in self.server.broker.vhosts:
            raise errors.PreconditionFailed(f"vhost '{name}' already exists")
        self.server.broker.add_vhost(name)
        return f"vhost '{name}' added"

    def _delete_vhost(self, args: dict[str, Any]) -> str:
        self.server.broker.delete_vhost(args["name"])
        return f"vhost '{args['name']}' deleted"

    # definitions

    def _export_definitions(self, args: dict[str, Any]) -> dict[str, Any]:
        return definitions.export(self.management)

    def _import_definitions(self, args: dict[str, Any]) -> str:
        body = args["definitions"]
        if not isinstance(body, dict):
            raise errors.PreconditionFailed("the definitions must be a JSON object")
        definitions.import_audited(self.management, body)
        counts = ", ".join(f"{len(body.get(k) or [])} {k}" for k in ("vhosts", "users", "permissions", "policies",
                                                                     "exchanges", "queues", "bindings"))
        return f"imported {counts}"

    # tracing (the firehose) and message tracking

    def _trace_on(self, args: dict[str, Any]) -> dict[str, Any]:
        vhost = self._vhost(args)
        was_on = set_tracing(vhost, True)
        if not was_on:
            log.info("tracing on in vhost '%s'", vhost.name)
        return {"vhost": vhost.name, "tracing": True, "was_on": was_on}

    def _trace_off(self, args: dict[str, Any]) -> dict[str, Any]:
        """Stop tracing; with ``if_unused``, only when nothing is bound to the trace exchange any more (what
        ``leveret tap`` asks when it leaves, so that it does not cut off another tap or tool)."""
        vhost = self._vhost(args)
        was_on = vhost.tracer is not None
        if args.get("if_unused") and vhost.exchange(TRACE_EXCHANGE).has_bindings():
            return {"vhost": vhost.name, "tracing": was_on, "was_on": was_on}
        set_tracing(vhost, False)
        if was_on:
            log.info("tracing off in vhost '%s'", vhost.name)
        return {"vhost": vhost.name, "tracing": False, "was_on": was_on}

    def _track(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        vhost = self._vhost(args)
        tracker = self.server.broker.tracker
        if tracker is None:
            raise errors.PreconditionFailed("message tracking is off (tracking_window or tracking_max_events "
                                            "is 0)")
        return tracker.events_or_raise(vhost.name, str(args["message_id"]))


def _peer(writer: asyncio.StreamWriter) -> dict[str, Any]:
    """The audit actor of a control-socket client: its uid and pid where the platform tells (SO_PEERCRED)."""
    actor: dict[str, Any] = {"via": "ctl"}
    sock = writer.get_extra_info("socket")
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is not None and peercred is not None:
        with contextlib.suppress(OSError):
            pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
            actor.update(uid=uid, pid=pid)
    return actor
