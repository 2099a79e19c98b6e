"""A real Leveret inside your test process: no container, no RabbitMQ install. See docs/testing.md.

``start_broker()`` runs a broker with the memory store on an ephemeral port of 127.0.0.1 in a background
thread (the same :class:`~leveret.node.ThreadedServer` the project's own tests use) and returns an
:class:`EmbeddedBroker`; ``broker()`` is the context-manager form that yields its URL::

    with leveret.testing.broker() as url:      # amqp://guest:guest@127.0.0.1:<port>/
        ...

Any AMQP 0-9-1 client works against it: leveret.tasks, Celery (kombu's ``amqp`` transport), Dramatiq
(``RabbitmqBroker``), pika, aio-pika. Nothing is written to disk except a temporary directory for the broker's
control socket, removed by ``stop()``. The pytest plugin (``leveret.pytest_plugin``) builds its fixtures on this.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from leveret.config import Config
from leveret.node import ThreadedServer

USER = "guest"
PASSWORD = "guest"


def amqp_url(port: int, vhost: str = "/", host: str = "127.0.0.1", user: str = USER, password: str = PASSWORD) -> str:
    """``amqp://user:password@host:port/<vhost>`` with the vhost percent-encoded ("/" is ``%2F``, except that the
    default vhost "/" is written as the bare trailing slash every AMQP client reads as "/")."""
    path = "" if vhost == "/" else quote(vhost, safe="")
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{path}"


class EmbeddedBroker:
    """A started Leveret on 127.0.0.1 (memory store). ``url`` / ``port`` to connect; ``http_url`` when the
    management API was asked for; ``new_vhost()`` for isolation; ``stop()`` closes every connection
    (320 CONNECTION_FORCED, as a broker shutdown) and frees the port. Stopping twice is harmless."""

    def __init__(self, server: ThreadedServer, data_dir: str) -> None:
        self.server = server
        self._data_dir = data_dir
        self._stopped = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return amqp_url(self.port)

    @property
    def http_port(self) -> int:
        """The management API's port, or -1 when it was not started (``start_broker(http=True)``)."""
        return self.server.http_port

    @property
    def stomp_port(self) -> int:
        """The STOMP port, or -1 when STOMP is off (the default; ``start_broker(stomp_port=0)`` turns it on)."""
        return self.server.stomp_port

    @property
    def http_url(self) -> str:
        if self.http_port < 0:
            raise RuntimeError("the management API is off: start the broker with http=True")
        return f"http://127.0.0.1:{self.http_port}"

    def url_for(self, vhost: str) -> str:
        return amqp_url(self.port, vhost)

    def new_vhost(self, name: str | None = None) -> str:
        """Create a vhost (a unique ``test-<hex>`` unless ``name`` is given), give the guest user full
        permissions on it, and return its URL. Costs a few dictionary inserts on the broker: cheap per test."""
        vhost = name or f"test-{uuid.uuid4().hex[:12]}"

        def create() -> None:
            broker = self.server.broker
            broker.add_vhost(vhost)
            broker.set_permission(USER, vhost)

        self.server.call(create)
        return self.url_for(vhost)

    def delete_vhost(self, name: str) -> None:
        """Delete a vhost with everything in it; connections to it are closed. No error if it is gone."""
        def delete() -> None:
            if name in self.server.broker.vhosts:
                self.server.broker.delete_vhost(name)

        self.server.call(delete)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedBroker {self.url}{' stopped' if self._stopped else ''}>"


def start_broker(*, http: bool = False, **settings: Any) -> EmbeddedBroker:
    """Start a Leveret for tests and return it running. ``http=True`` also starts the management API on an
    ephemeral port. Other keyword arguments are :class:`~leveret.config.Config` settings (e.g.
    ``default_vhost=``, ``heartbeat=``); ``port`` defaults to 0 (any free port). Raises what the broker raises
    when it cannot start (``OSError`` for a port in use)."""
    data_dir = tempfile.mkdtemp(prefix="leveret-test-")  # short path: the control socket lives here
    values: dict[str, Any] = {"port": 0, "bind": "127.0.0.1", "store": "memory", "data_dir": data_dir,
                              "audit_log": "", "http_port": 0 if http else -1,
                              "stomp_port": -1, "stomp_tls_port": -1, "disk_free_limit": 0}
    values.update(settings)
    server = ThreadedServer(Config(**values))
    try:
        server.start()
    except BaseException:
        server.loop.call_soon_threadsafe(server.loop.stop)  # the loop's thread is already running
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return EmbeddedBroker(server, data_dir)


@contextmanager
def broker(*, http: bool = False, **settings: Any) -> Iterator[str]:
    """``with broker() as url:`` a Leveret for the block (see :func:`start_broker`); stopped on exit."""
    running = start_broker(http=http, **settings)
    try:
        yield running.url
    finally:
        running.stop()
