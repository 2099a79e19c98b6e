"""The control socket: how ``leveret ctl`` talks to a running broker (as rabbitmqctl talks to RabbitMQ).

A Unix socket in the data directory (``<data_dir>/leveret.sock``, owner-only) that takes one JSON object per
line, ``{"command": ..., "args": {...}}``, and answers one line, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "...", "status": 404}``. Core errors are translated here, once, like the AMQP
adapter does for AMQP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leveret.core import audit, errors
from leveret.core.policies import Policy

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("leveret.control")

STATUS = {
    errors.NotFound: 404,
    errors.AccessRefused: 403,
    errors.PreconditionFailed: 400,
    errors.ResourceLocked: 409,
}


def socket_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "leveret.sock"


class ControlServer:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.path = socket_path(server.config.data_dir)
        self._server: asyncio.base_events.Server | None = None
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
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
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
                writer.write(json.dumps(self.handle(line), default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = self.commands.get(request.get("command"))
            if command is None:
                return {"ok": False, "status": 400, "error": f"unknown command {request.get('command')!r}; "
                        f"known: {', '.join(sorted(self.commands))}"}
            return {"ok": True, "result": command(request.get("args") or {})}
        except errors.BrokerError as exc:
            return {"ok": False, "status": STATUS.get(type(exc), 400), "error": exc.text}
        except (ValueError, TypeError, AttributeError) as exc:
            return {"ok": False, "status": 400, "error": f"bad request: {exc}"}

    # --- commands ----------------------------------------------------------------------------------

    @staticmethod
    def _limits(args: dict[str, Any]) -> dict[str, Any]:
        limits = args["limits"]
        if isinstance(limits, str):
            limits = json.loads(limits)
        if not isinstance(limits, dict):
            raise ValueError("limits must be a JSON object, e.g. '{\"max-connections\": 10}'")
        return limits

    def _set_vhost_limits(self, args: dict[str, Any]) -> dict[str, int]:
        """Replaces the vhost's limits (as rabbitmqctl set_vhost_limits)."""
        return self.server.broker.set_vhost_limits(args.get("vhost", "/"), self._limits(args))

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
        return self.server.broker.set_user_limits(args["user"], self._limits(args))

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
        return {"node": broker.node_name, "port": self.server.port, "connections": len(self.server.connections),
                "vhosts": sorted(broker.vhosts), "memory_used": broker.memory.used, "alarm": broker.memory.alarm}

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
        vhosts = self.server.broker.vhosts
        names = [args["vhost"]] if args.get("vhost") else sorted(vhosts)
        return [{"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply_to": p.apply_to,
                 "priority": p.priority, "definition": p.definition}
                for name in names if name in vhosts for p in vhosts[name].policies.values()]

    def _list_queues(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        vhosts = self.server.broker.vhosts
        names = [args["vhost"]] if args.get("vhost") else sorted(vhosts)
        return [{"vhost": vhost, "name": q.name, "messages": q.message_count, "consumers": q.consumer_count,
                 "durable": q.durable, "policy": q.policy, "arguments": q.arguments}
                for vhost in names if vhost in vhosts for q in vhosts[vhost].queues.values()]


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
