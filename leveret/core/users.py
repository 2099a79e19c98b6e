"""Users, their permissions and limits (:class:`User`), and the broker's operations on them (:class:`Users`,
a part of :class:`~leveret.core.broker.Broker`): create, update, delete, set or clear permissions and limits,
and authenticate. Every change is stored (when the broker has a store) and audited."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from leveret.core.storage import PermissionDef, UserDef

from .access import USER_LIMITS, Permission, validate_limits
from .errors import AccessRefused, NotFound
from .passwords import check_password, hash_password

if TYPE_CHECKING:
    from . import audit as _audit
    from .durability import Durability
    from .session import Session
    from .vhost import VHost


@dataclass
class User:
    name: str
    password_hash: str
    tags: tuple[str, ...] = ()
    permissions: dict[str, Permission] = field(default_factory=dict)  # vhost -> patterns
    limits: dict[str, int] = field(default_factory=dict)  # max-connections, max-channels
    version: int = 0  # bumped by every change of ``permissions`` (sessions' publish checks rely on it)

    def permission(self, vhost: str) -> Permission | None:
        """The user's permissions in ``vhost`` (None: no access). Compiled modules (setup.py) ask through this
        method, not the dict: mypyc's dict operations skip the overrides of the internal user's ``_Everywhere``."""
        return self.permissions.get(vhost)

    @property
    def vhosts(self) -> Any:
        """The names of the vhosts the user has permissions in (a live view)."""
        return self.permissions.keys()


CLUSTER_USER = "leveret.cluster"
"""The reserved user name of the links between the nodes of a cluster (core/remote.py, docs/cluster.md)."""


class _Everywhere(dict[str, Permission]):
    """The internal user's permissions: configure, write and read in every vhost, present or future."""

    _all = Permission()

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> Permission:
        return self._all

    def get(self, key: str, default: Any = None) -> Permission:  # type: ignore[override]
        return self._all


def internal_user(secret: str | None, password: str) -> User:
    """The user of another node's link (:data:`CLUSTER_USER`) when ``password`` is the cluster ``secret``;
    AccessRefused otherwise, and always when ``secret`` is None (the node does not run with ``cluster = true``)."""
    if secret is None or not hmac.compare_digest(secret.encode(), password.encode()):
        raise AccessRefused(f"user '{CLUSTER_USER}' - invalid credentials")
    return User(CLUSTER_USER, "", ("administrator",), _Everywhere())


class Users:
    """The users of the broker and what is done to them (a part of the Broker; the attributes below are the
    Broker's)."""

    users: dict[str, User]
    vhosts: dict[str, VHost]
    sessions: set[Session]
    loopback_users: set[str]
    cluster_secret: str | None  # several nodes: the password of CLUSTER_USER (None: no link may log in)
    durability: Durability | None
    audit: _audit.AuditLog

    def _audited(self) -> bool:
        return self.durability is None or not self.durability.recovering

    def _force_close(self, sessions: list[Session], reason: str) -> None:
        for session in sessions:
            session.force_close(reason)

    def add_user(self, name: str, password: str, tags: tuple[str, ...] = (), vhosts: set[str] | None = None) -> User:
        user = User(name, hash_password(password), tags, {vhost: Permission() for vhost in vhosts or ()})
        self.users[name] = user
        if self.durability is not None:
            store = self.durability
            store.save_user(UserDef(name, user.password_hash, tags))
            for vhost in user.vhosts:
                store.save_permission(PermissionDef(name, vhost))
        self.audit.record("user.created", user=name, tags=list(tags))
        for vhost in user.vhosts:
            self.audit.record("permission.set", user=name, vhost=vhost, configure=".*", write=".*", read=".*")
        return user

    def put_user(self, name: str, password_hash: str, tags: tuple[str, ...] = ()) -> tuple[User, bool]:
        """Create a user or replace its password hash and tags (management API, definitions import).
        ``password_hash`` is in RabbitMQ's sha256 format; "" means no password login. Returns (user, created)."""
        user = self.users.get(name)
        created = user is None
        if user is None:
            user = self.users[name] = User(name, password_hash, tuple(tags))
            changed_password = True
        else:
            changed_password = user.password_hash != password_hash
            user.password_hash = password_hash
            user.tags = tuple(tags)
        if self.durability is not None and not self.durability.recovering:
            self.durability.save_user(UserDef(name, password_hash, tuple(tags)))
        if self._audited():
            self.audit.record("user.created" if created else "user.updated", user=name, tags=list(tags),
                              password_changed=changed_password)
        return user, created

    def delete_user(self, name: str) -> None:
        """Delete a user; its open connections are closed (320, as RabbitMQ does)."""
        user = self.users.get(name)
        if user is None:
            raise NotFound(f"no user '{name}'")
        del self.users[name]
        user.permissions.clear()  # anything its connections still try is refused
        user.version += 1
        if self.durability is not None:
            self.durability.delete_user(name)
        self.audit.record("user.deleted", user=name)
        self._force_close([s for s in self.sessions if s.user is user], f"user '{name}' is deleted")

    def set_permission(self, user_name: str, vhost_name: str, configure: str = ".*", write: str = ".*",
                       read: str = ".*") -> bool:
        """Set a user's configure/write/read patterns in a vhost. Returns True when it had none before.
        Open connections are not closed: their next operation is checked against the new patterns.
        Raises NotFound (user, vhost) and PreconditionFailed (a pattern that is not a regular expression)."""
        user = self.users.get(user_name)
        if user is None:
            raise NotFound(f"no user '{user_name}'")
        if vhost_name not in self.vhosts:
            raise NotFound(f"no vhost '{vhost_name}'")
        permission = Permission(configure, write, read)
        created = vhost_name not in user.permissions
        user.permissions[vhost_name] = permission
        user.version += 1
        if self.durability is not None and not self.durability.recovering:
            self.durability.save_permission(PermissionDef(user_name, vhost_name, configure, write, read))
        if self._audited():
            self.audit.record("permission.set", user=user_name, vhost=vhost_name, configure=configure, write=write,
                              read=read)
        return created

    def clear_permission(self, user_name: str, vhost_name: str) -> None:
        user = self.users.get(user_name)
        if user is None or vhost_name not in user.permissions:
            raise NotFound(f"no permissions for user '{user_name}' in vhost '{vhost_name}'")
        del user.permissions[vhost_name]
        user.version += 1
        if self.durability is not None:
            self.durability.delete_permission(user_name, vhost_name)
        self.audit.record("permission.cleared", user=user_name, vhost=vhost_name)

    def set_user_limits(self, user_name: str, limits: dict[str, Any], *, replace: bool = False) -> dict[str, int]:
        """Set a user's limits, merged with those it has (as rabbitmqctl set_user_limits) unless ``replace``."""
        user = self.users.get(user_name)
        if user is None:
            raise NotFound(f"no user '{user_name}'")
        checked = validate_limits(limits, USER_LIMITS, f"user '{user_name}'")
        user.limits = checked if replace else {**user.limits, **checked}
        self._save_limits("user", user_name, user.limits)
        return user.limits

    def clear_user_limits(self, user_name: str, name: str | None = None) -> None:
        user = self.users.get(user_name)
        if user is None:
            raise NotFound(f"no user '{user_name}'")
        user.limits = {} if name is None else {k: v for k, v in user.limits.items() if k != name}
        self._save_limits("user", user_name, user.limits)

    def _save_limits(self, kind: str, name: str, limits: dict[str, int]) -> None:
        if self.durability is not None and not self.durability.recovering:
            self.durability.save_limits(kind, name, dict(limits))
        if self._audited():
            subject: dict[str, Any] = {kind: name, "limits": limits}
            self.audit.record(f"{kind}_limits.{'set' if limits else 'cleared'}", **subject)

    def authenticate(self, username: str, password: str, loopback: bool, amqp: bool = False) -> User:
        """The user with these credentials; AccessRefused otherwise (and for loopback-only users elsewhere). The
        reserved :data:`CLUSTER_USER` logs in over AMQP (``amqp``) with the cluster secret only, never as a stored
        user, and never through the management API or STOMP."""
        if username == CLUSTER_USER:
            return internal_user(self.cluster_secret if amqp else None, password)
        if not password:  # as RabbitMQ's internal backend: a blank password never logs in
            raise AccessRefused(f"user '{username}' attempted to log in with a blank password, which is "
                                "prohibited")
        user = self.users.get(username)
        if user is None or not check_password(password, user.password_hash):
            raise AccessRefused(f"user '{username}' - invalid credentials")
        if username in self.loopback_users and not loopback:
            raise AccessRefused(f"user '{username}' can only connect via localhost")
        return user

    def authenticate_certificate(self, username: str, loopback: bool) -> User:
        """The user a verified TLS client certificate names (SASL EXTERNAL): no password is checked, but the
        user must exist and loopback-only users must still come from loopback."""
        user = self.users.get(username)
        if user is None:
            raise AccessRefused(f"user '{username}' (from the client certificate) does not exist")
        if username in self.loopback_users and not loopback:
            raise AccessRefused(f"user '{username}' can only connect via localhost")
        return user
