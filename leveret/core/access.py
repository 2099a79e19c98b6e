"""Authorisation as RabbitMQ does it: per-vhost configure/write/read regular expressions, and resource limits.

A user's permissions in a vhost are three regular expressions matched (unanchored, as Erlang's ``re:run``)
against the name of the exchange or queue an operation touches. An empty pattern means ``^$`` (nothing, since
names are never empty: the default exchange is called ``amq.default`` for permission purposes). Which
operation needs which permission on which resource is RabbitMQ 3.10's table (docs/security.md); the checks are
made where the core performs the operation (:class:`leveret.core.broker.VHost`, ``Session``, ``Channel``), in
RabbitMQ's order, so refusals carry RabbitMQ's texts.

Patterns are compiled once per :class:`Permission`; each keeps a small cache of decisions by name, and ``.*``
is recognised without matching at all, so the publish path costs a dict lookup and an attribute test. A
permission change replaces the user's :class:`Permission` object, so the next operation (on any open channel)
is checked against the new patterns.

Limits (``max-connections``/``max-queues`` per vhost, ``max-connections``/``max-channels`` per user) are dicts
of name -> integer; a negative value means "no limit", as in RabbitMQ.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import PermissionRefused, PreconditionFailed

PERMISSIONS = ("configure", "write", "read")
VHOST_LIMITS = ("max-connections", "max-queues")
USER_LIMITS = ("max-connections", "max-channels")
_CACHE_SIZE = 1024
_MATCH_ALL = frozenset({".*", "^.*", ".*$", "^.*$"})


class Pattern:
    """One compiled permission pattern with a bounded cache of decisions."""

    __slots__ = ("_cache", "_regex", "everything", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.everything = source in _MATCH_ALL
        try:
            self._regex = re.compile(source or "^$")
        except re.error as exc:
            raise PreconditionFailed(f"invalid regular expression '{source}': {exc}") from None
        self._cache: dict[str, bool] = {}

    def allows(self, name: str) -> bool:
        if self.everything:
            return True
        decision = self._cache.get(name)
        if decision is None:
            decision = self._regex.search(name) is not None
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[name] = decision
        return decision


class Permission:
    """A user's three patterns in one vhost (immutable: a change makes a new object)."""

    __slots__ = ("configure", "read", "write")

    def __init__(self, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        self.configure = Pattern(configure)
        self.write = Pattern(write)
        self.read = Pattern(read)

    def patterns(self) -> tuple[str, str, str]:
        return self.configure.source, self.write.source, self.read.source

    def __repr__(self) -> str:
        configure, write, read = self.patterns()
        return f"Permission({configure!r}, {write!r}, {read!r})"


def resource_name(kind: str, name: str) -> str:
    """The name a permission is checked against: the default exchange is ``amq.default``."""
    return "amq.default" if kind == "exchange" and not name else name


class Access:
    """What one authenticated user may do in the vhost its connection opened."""

    __slots__ = ("last_exchange", "user", "version", "vhost")

    def __init__(self, user: Any, vhost: str) -> None:
        self.user = user  # leveret.core.broker.User
        self.vhost = vhost
        # the last exchange basic.publish was allowed to, under the user's permissions version ``version``:
        # Channel.publish skips the check while both are unchanged (one comparison each per message)
        self.last_exchange: str | None = None
        self.version = -1

    def check(self, permission: str, kind: str, name: str) -> None:
        """Raise PermissionRefused (AMQP 403) unless the user has ``permission`` on the ``kind`` named ``name``."""
        current = self.user.permission(self.vhost)
        name = resource_name(kind, name)
        if current is None or not getattr(current, permission).allows(name):
            raise PermissionRefused(f"access to {kind} '{name}' in vhost '{self.vhost}' refused for user "
                                f"'{self.user.name}'")

    def configure(self, kind: str, name: str) -> None:
        self.check("configure", kind, name)

    def write(self, kind: str, name: str) -> None:
        self.check("write", kind, name)

    def read(self, kind: str, name: str) -> None:
        self.check("read", kind, name)

    def publish(self, exchange: str) -> None:
        """basic.publish: write on the exchange; remembered until the exchange or the permissions change."""
        version = self.user.version
        current = self.user.permission(self.vhost)
        if current is None or not (current.write.everything or current.write.allows(exchange or "amq.default")):
            self.check("write", "exchange", exchange)
        self.last_exchange = exchange
        self.version = version


def validate_limits(limits: Any, allowed: tuple[str, ...], owner: str) -> dict[str, int]:
    """A limits object as given to set-vhost-limits / set-user-limits: names in ``allowed``, integer values."""
    if not isinstance(limits, dict):
        raise PreconditionFailed(f"limits of {owner} must be a JSON object")
    checked: dict[str, int] = {}
    for name, value in limits.items():
        if name not in allowed:
            raise PreconditionFailed(f"unknown limit '{name}' for {owner}; known: {', '.join(allowed)}")
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
                value = int(value)
            else:
                raise PreconditionFailed(f"limit '{name}' of {owner} must be an integer, not {value!r}")
        checked[name] = value
    return checked


def reached(limits: dict[str, int], name: str, count: int) -> int | None:
    """The limit ``name`` when ``count`` (the number in use) has reached it; None when there is room."""
    limit = limits.get(name)
    if limit is None or limit < 0 or count < limit:
        return None
    return limit
