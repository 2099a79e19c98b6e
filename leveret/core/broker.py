"""The broker (:class:`Broker`): the registry of vhosts, users and sessions, the memory monitor, the store's
durability, delayed messages, the status book and the tracker; vhosts and their policies and limits are
created, changed and deleted here, users in :mod:`leveret.core.users` (a part of the Broker).

Everything in the core is synchronous and frame-free. Operations raise :mod:`leveret.core.errors` exceptions
with RabbitMQ's wording; the protocol adapters translate them. Where the rest lives: a vhost's exchanges and
queues in :mod:`.vhost`, routing and the one publish entry in :mod:`.routing`, dead-lettering in
:mod:`.dead_letter`, client connections in :mod:`.session`, the memory alarm in :mod:`.memory`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from leveret.core.storage import Store

from . import audit as _audit
from .access import VHOST_LIMITS, validate_limits
from .delays import DelayedMessages
from .durability import Durability
from .errors import NotFound
from .memory import MemoryMonitor, process_rss
from .policies import Policy, validate_policy
from .queue import Queue
from .remote import Remote
from .session import Session
from .shared import HandedIn, apply_changes, new_owners, take_over
from .status import StatusBook
from .timers import SystemTimers, Timers
from .tracking import Tracker
from .users import User, Users
from .vhost import VHost, strip_crlf

__all__ = ["Broker", "MemoryMonitor", "Session", "User", "VHost", "process_rss", "strip_crlf"]

log = logging.getLogger("leveret.broker")


class Broker(Users):
    """The whole broker: vhosts, users, the memory monitor and, when it has a store, its durability.

    With a ``store`` the broker's state is recovered from it at construction (defaults are created only on
    a first start) and every durable change is written to it; ``dispatch`` runs a callback on the broker's
    thread (the event loop's ``call_soon_threadsafe``)."""

    def __init__(self, *, memory_high_watermark: int = 0, default_user: str = "guest",
                 default_pass: str = "guest", default_vhost: str = "/",
                 loopback_users: tuple[str, ...] = ("guest",), store: Store | None = None,
                 dispatch: Callable[..., Any] | None = None, queue_memory_budget: int = 16_000_000,
                 queue_memory_window: int = 2048,
                 timers: Timers | None = None, audit: _audit.AuditLog | None = None,
                 tracking_window: float = 0, tracking_max_events: int = 0, node_name: str | None = None) -> None:
        self.audit = audit or _audit.AuditLog()
        self.memory = MemoryMonitor(memory_high_watermark)
        self.timers: Timers = timers or SystemTimers()
        self.tracker = (Tracker(tracking_window, tracking_max_events)
                        if tracking_window > 0 and tracking_max_events > 0 else None)
        self.queue_memory_budget = queue_memory_budget
        self.queue_memory_window = queue_memory_window
        self.reply_queues: dict[str, Queue] = {}
        self.vhosts: dict[str, VHost] = {}
        self.users: dict[str, User] = {}
        self.loopback_users = set(loopback_users)
        self.node_name = node_name or f"leveret@{os.uname().nodename}"
        self.durability = Durability(store, dispatch or (lambda fn, *args: fn(*args))) if store else None
        if self.durability is not None:
            self.durability.alarms = self.memory
        self.delays = DelayedMessages(self)
        self.status = StatusBook(self)  # task status records (core/status.py); before recovery makes queues
        self.sessions: set[Session] = set()  # connections past connection.open
        self.vhost_connections: dict[str, int] = {}
        self.user_connections: dict[str, int] = {}
        self.user_channels: dict[str, int] = {}
        self.recovered_queues = 0
        self.recovered_messages = 0
        if store is None or not self._recover(store):
            self.add_vhost(default_vhost)
            if default_user:
                self.add_user(default_user, default_pass, ("administrator",), vhosts={default_vhost})
        self.on_lease_lost: Callable[[], None] | None = None  # set by the node: it stops (docs/cluster.md)
        # several nodes (core/remote.py): the relay to other nodes' queues, and the secret their links log in with
        self.remote: Remote | None = None
        self.cluster_secret: str | None = None
        if self.durability is not None:  # several nodes on one store: the others' changes (core/shared.py)
            self.durability.watch_definitions(lambda changes: apply_changes(self, changes))
            handed = HandedIn(self)  # routing between nodes: hand-over rows for this node's queues
            self.durability.watch_queues(lambda queues: take_over(self, queues, handed), self._lease_lost,
                                         lambda found: new_owners(self, found))
            self.durability.watch_handed(handed.handed)
            self.durability.watch_lanes(self.delays.adopt)  # timers across nodes: a dead node's delayed lanes

    # --- connections (for limits and forced closes) ------------------------------------------------

    def session_opened(self, session: Session) -> None:
        if session in self.sessions or session.user is None:
            return
        self.sessions.add(session)
        vhost = session.vhost.name
        self.vhost_connections[vhost] = self.vhost_connections.get(vhost, 0) + 1
        self.user_connections[session.user.name] = self.user_connections.get(session.user.name, 0) + 1

    def session_closed(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        if self.remote is not None:
            self.remote.session_closed(session)
        self.count_down(self.vhost_connections, session.vhost.name)
        if session.user is not None:
            self.count_down(self.user_connections, session.user.name)

    @staticmethod
    def count_down(counts: dict[str, int], key: str) -> None:
        left = counts.get(key, 0) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)

    # --- vhosts, their limits and policies (users: core/users.py) ------------------------------------

    def add_vhost(self, name: str) -> VHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VHost(self, name)
            if self.durability is not None and not self.durability.recovering:
                self.durability.save_vhost(name)
            if self._audited():
                self.audit.record("vhost.created", vhost=name)
        return vhost

    def set_vhost_limits(self, vhost_name: str, limits: dict[str, Any], *, replace: bool = True) -> dict[str, int]:
        """Set a vhost's limits (``replace``: the whole set, as rabbitmqctl set_vhost_limits; otherwise
        merged, as PUT /api/vhost-limits/{vhost}/{name}). Returns the limits now in force."""
        vhost = self.vhosts.get(vhost_name)
        if vhost is None:
            raise NotFound(f"no vhost '{vhost_name}'")
        checked = validate_limits(limits, VHOST_LIMITS, f"vhost '{vhost_name}'")
        vhost.limits = checked if replace else {**vhost.limits, **checked}
        self._save_limits("vhost", vhost_name, vhost.limits)
        return vhost.limits

    def clear_vhost_limits(self, vhost_name: str, name: str | None = None) -> None:
        """Clear one limit of a vhost, or all of them (``name`` None)."""
        vhost = self.vhosts.get(vhost_name)
        if vhost is None:
            raise NotFound(f"no vhost '{vhost_name}'")
        vhost.limits = {} if name is None else {k: v for k, v in vhost.limits.items() if k != name}
        self._save_limits("vhost", vhost_name, vhost.limits)

    def delete_vhost(self, name: str) -> None:
        """Delete a vhost with its queues (their consumers are cancelled), exchanges, policies and
        permissions."""
        vhost = self.vhosts.get(name)
        if vhost is None:
            raise NotFound(f"no vhost '{name}'")
        self.audit.record("vhost.deleted", vhost=name)
        self._force_close([s for s in self.sessions if s.opened_vhost is vhost], f"vhost '{name}' is deleted")
        for queue in list(vhost.queues.values()):
            vhost.remove_queue(queue)
        del self.vhosts[name]
        self.status.forget_vhost(name)
        for user in self.users.values():
            if user.permissions.pop(name, None) is not None:
                user.version += 1
        if self.durability is not None:
            self.durability.flush()
            for policy_name in vhost.policies:
                self.durability.delete_policy(name, policy_name)
            self.durability.delete_vhost(name)

    def set_policy(self, policy: Policy) -> None:
        """Add or replace a policy and apply it at once. Raises NotFound (vhost), PreconditionFailed (policy)."""
        vhost = self.vhosts.get(policy.vhost)
        if vhost is None:
            raise NotFound(f"no vhost '{policy.vhost}'")
        validate_policy(policy)
        vhost.policies[policy.name] = policy
        if self.durability is not None and not self.durability.recovering:
            self.durability.save_policy(policy)
        if self._audited():
            self.audit.record("policy.set", vhost=policy.vhost, name=policy.name, pattern=policy.pattern,
                              apply_to=policy.apply_to, priority=policy.priority, definition=policy.definition)
        vhost.apply_policies()

    def clear_policy(self, vhost_name: str, name: str) -> None:
        vhost = self.vhosts.get(vhost_name)
        if vhost is None or name not in vhost.policies:
            raise NotFound(f"no policy '{name}' in vhost '{vhost_name}'")
        del vhost.policies[name]
        if self.durability is not None:
            self.durability.delete_policy(vhost_name, name)
        self.audit.record("policy.cleared", vhost=vhost_name, name=name)
        vhost.apply_policies()

    def _lease_lost(self) -> None:
        """Several nodes: this node could not renew its queue leases in time, so another node may serve its queues
        now. It stops delivering at once: every client connection is closed (320), and the node is told."""
        log.error("the queue leases are lost: closing every client connection")
        self._force_close(list(self.sessions), "this node lost its queue leases (docs/cluster.md)")
        if self.on_lease_lost is not None:
            self.on_lease_lost()

    def _recover(self, store: Store) -> bool:
        """Rebuild the broker from its store (core/recovery.py). False when the store is new."""
        from .recovery import recover

        return recover(self)
