""":class:`Management`: the broker as the management API's handlers and the control socket see it.

Lookups that raise the core's NotFound (so a missing vhost, user or connection is a 404 everywhere), which
vhosts a user may see, the client connections and listeners the server hands in, the message rates, and
waiting until the store has what a change just wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from leveret.core import errors
from leveret.core.broker import Broker, Session, User, VHost
from leveret.core.queue import Queue

from .rates import History, Rates, broker_sample
from .views import connection_name, session_vhost


def may_see_all(user: User) -> bool:
    """Administrators and monitoring users see every vhost's objects and every connection."""
    return bool({"administrator", "monitoring"} & set(user.tags))


class Management:
    """One broker's management side. ``sessions()`` lists the open client connections, ``listeners()`` the
    broker's listeners (``{"protocol": ..., "ip_address": ..., "port": ...}``, as /api/overview shows them)."""

    def __init__(self, broker: Broker, *, sessions: Callable[[], list[Session]],
                 listeners: Callable[[], list[dict[str, Any]]]) -> None:
        self.broker = broker
        self.sessions = sessions
        self.listeners = listeners
        self.rates = Rates()
        self.history = History(lambda key: broker_sample(broker, key))  # the charts' samples

    @property
    def node(self) -> str:
        return self.broker.node_name

    def vhost(self, name: str) -> VHost:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise errors.NotFound(f"no vhost '{name}'")
        return vhost

    def user(self, name: str) -> User:
        user = self.broker.users.get(name)
        if user is None:
            raise errors.NotFound(f"no user '{name}'")
        return user

    def visible_vhosts(self, user: User, name: str | None = None) -> list[VHost]:
        """The vhost ``name`` (NotFound if missing), or without a name every vhost ``user`` may see
        (administrators and monitoring users: all; others: those they have permissions in)."""
        if name is not None:
            return [self.vhost(name)]
        if may_see_all(user):
            return list(self.broker.vhosts.values())
        return [v for v in self.broker.vhosts.values() if v.name in user.vhosts]

    async def purge(self, queue: Queue) -> int:
        """Purge ``queue`` (the management API's and ``leveret ctl purge-queue``), durably; a queue another node
        serves is purged there, over a link (docs/cluster.md); how many messages went."""
        remote = self.broker.remote
        if queue.served_by is None or remote is None:
            count = queue.purge()
            await self.durable()
            return count
        answer: asyncio.Future[int | BaseException] = asyncio.get_running_loop().create_future()
        remote.purge(None, queue, answer.set_result)
        got = await answer
        if isinstance(got, BaseException):
            raise got
        return got

    async def durable(self) -> None:
        """Wait until the message operations just made are on disk (as a confirm would). Raises InternalError
        when the store fails."""
        durability = self.broker.durability
        if durability is None:
            return
        done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def committed(exc: BaseException | None) -> None:
            if not done.done():
                done.set_result(exc)

        durability.commit([committed])  # with nothing pending, ``committed`` is called at once
        exc = await done
        if exc is not None:
            raise errors.InternalError(f"the store failed: {exc}")

    # --- client connections ---------------------------------------------------------------------------

    def amqp_address(self) -> str:
        """``host:port`` of the plain AMQP listener ("?" without one), the right half of connection names."""
        for listener in self.listeners():
            if listener.get("protocol") == "amqp":
                return f"{listener['ip_address']}:{listener['port']}"
        return "?"

    def open_sessions(self, vhost: str | None = None) -> list[Session]:
        """The logged-in client connections with a vhost open (of ``vhost`` only, when given: NotFound if it
        does not exist), as the API and ``leveret ctl`` list them."""
        if vhost is not None:
            self.vhost(vhost)
        return [s for s in self.sessions() if s.user is not None and session_vhost(s) is not None
                and (vhost is None or session_vhost(s) == vhost)]

    def find_connection(self, name: str) -> Session:
        """The open client connection called ``name`` (as listed: ``peer -> listener``); NotFound otherwise."""
        address = self.amqp_address()
        for session in self.open_sessions():
            if connection_name(session, address) == name:
                return session
        raise errors.NotFound(f"no connection '{name}'")
