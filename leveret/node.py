"""One broker process, composed: the one place that builds a Leveret node from its :class:`Config`.

A :class:`Node` opens the store, recovers the :class:`~leveret.core.broker.Broker` from it, and starts the
edges over that broker: the AMQP listeners (leveret/server/), the management API over HTTP and HTTPS
(leveret/http/), and the control socket behind ``leveret ctl`` (leveret/server/control.py). It also runs the
disk and memory alarms' periodic checks. ``server/`` and ``http/`` do not import each other; only this module
knows them both.

``serve(config)`` is what ``leveret serve`` runs. :class:`Node` is the same broker for embedding and tests:
``await node.start()`` binds (port 0 picks a free one, see ``node.port``), ``await node.stop()`` closes every
connection with 320 CONNECTION_FORCED and stops. :class:`ThreadedServer` runs a Node on a background thread.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from leveret import __version__, build
from leveret.config import STORES, Config, node_name
from leveret.core.audit import AuditLog
from leveret.core.broker import Broker, Session
from leveret.http.server import ManagementServer
from leveret.management import cluster
from leveret.management.context import Management
from leveret.server.control import ControlServer
from leveret.server.listener import AMQPListener
from leveret.server.relay import Relay
from leveret.server.stomp import StompListener
from leveret.store import Store, StoreError, open_store

if TYPE_CHECKING:
    from leveret.server.amqp import AMQPConnection

log = logging.getLogger("leveret.server")
DISK_CHECK_INTERVAL = 1.0
MEMORY_CHECK_INTERVAL = 0.1  # the process's RSS is sampled this often for the memory alarm


class LoopTimers:
    """leveret.core.timers.Timers on an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        return time.time()

    def call_later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(max(0.0, delay), fn)


class Node:
    """One broker: its store, its Broker, and the AMQP, HTTP(S) and control-socket listeners over it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker: Broker = None  # type: ignore[assignment]  # made in start(), on the event loop
        self.store: Store | None = None
        self.amqp = AMQPListener(config)  # checks the TLS files: a bad one stops the broker before it opens anything
        self._disk_timer: asyncio.TimerHandle | None = None
        self._memory_timer: asyncio.TimerHandle | None = None
        # the memory alarm also watches the process's RSS, unless the broker is embedded in another program
        # (ThreadedServer): then the RSS is not the broker's, and only what messages cost counts
        self.process_rss = True
        self.control: ControlServer | None = None
        self.http: ManagementServer | None = None
        self.http_port = config.http_port  # the bound port after start(); -1: the HTTP API is off
        self.https: ManagementServer | None = None
        self.https_port = -1  # the bound HTTPS port of the management API; -1: off
        self.stomp = StompListener(config, self.amqp.ssl_context)  # STOMP and STOMP over TLS (docs/stomp.md)
        self.failed: str | None = None  # why the node must stop (serve() exits with status 1 and this line)
        self.on_failure: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        """The bound AMQP port after start(); -1: the plain listener is off."""
        return self.amqp.port

    @property
    def tls_port(self) -> int:
        """The bound AMQPS port after start(); -1: TLS is off."""
        return self.amqp.tls_port

    @property
    def stomp_port(self) -> int:
        """The bound STOMP port after start(); -1: STOMP is off."""
        return self.stomp.port

    @property
    def stomp_tls_port(self) -> int:
        """The bound STOMP-over-TLS port after start(); -1: off."""
        return self.stomp.tls_port

    @property
    def connections(self) -> set[AMQPConnection]:
        """The open AMQP connections."""
        return self.amqp.connections

    def sessions(self) -> list[Session]:
        """The sessions of the open AMQP and STOMP connections (the management API's connections and channels)."""
        return [conn.session for conn in self.amqp.connections] + [conn.session for conn in self.stomp.connections]

    async def start(self) -> None:
        """Open the store, recover, bind and listen. Raises StoreError when the store cannot be used and
        OSError when an address cannot be bound."""
        loop = asyncio.get_running_loop()
        if self.broker is None:
            self.broker = self._open_broker(loop)
        if self.broker.durability is not None and self.config.cluster:  # consuming through any node: the links
            secret = await loop.run_in_executor(None, self.broker.durability.cluster_secret)  # (server/relay.py)
            if secret is not None:
                self.broker.cluster_secret = secret
                self.broker.remote = Relay(self.broker, secret)
        await self.amqp.start(self.broker)
        try:
            await self.stomp.start(self.broker)
        except OSError:
            self.amqp.close()
            raise
        if self.config.http_port >= 0:
            self.http = await self._start_http(self.config.http_port, None)
            self.http_port = self.http.port
        if self.amqp.ssl_context is not None and self.config.http_tls_port >= 0:
            self.https = await self._start_http(self.config.http_tls_port, self.amqp.ssl_context)
            self.https_port = self.https.port
        if self.config.disk_free_limit and self.config.store != "memory":  # PostgreSQL: the connection (free_space)
            self._check_disk()
        if self.process_rss:
            self._check_memory()
        else:
            self.broker.memory.track_rss = False
        self.control = ControlServer(self)
        await self.control.start()
        if self.broker.durability is not None and self.amqp.port:  # several nodes: where clients find this one
            self.broker.durability.advertise(advertised_address(self.config.bind, self.amqp.port))
        if self.broker.durability is not None and self.config.cluster:  # the other nodes' management API shows
            view = Management(self.broker, sessions=self.sessions, listeners=self.listeners)  # what this one serves
            self.broker.durability.watch_summary(lambda: cluster.summary(view))
        log.info("Leveret %s, %s", __version__, build())
        self.stomp.log_listening()
        self.amqp.log_listening()  # last: tests/support/serverproc.py takes it as the sign that the broker is up

    async def _start_http(self, port: int, ssl_context: ssl.SSLContext | None) -> ManagementServer:
        """The management API on ``port`` (HTTPS with ``ssl_context``); on failure what was started is closed.
        It binds now but imports aiohttp only at its first connection (leveret/http/server.py)."""
        http = ManagementServer(self.broker, self.config.http_bind, port, sessions=self.sessions,
                                listeners=self.listeners, ssl_context=ssl_context,
                                metrics_auth=self.config.metrics_auth)
        try:
            await http.start()
        except BaseException:
            if self.http is not None:
                await self.http.stop()
                self.http = None
            self.amqp.close()
            self.stomp.close()
            raise
        return http

    def listeners(self) -> list[dict[str, object]]:
        """Every bound listener (AMQP, AMQPS, STOMP, STOMP over TLS, HTTP, HTTPS) as the management API lists them."""
        found = self.amqp.listeners() + self.stomp.listeners()
        for protocol, http, port in (("http", self.http, self.http_port), ("https", self.https, self.https_port)):
            if http is not None:
                found.append({"node": self.broker.node_name, "protocol": protocol,
                              "ip_address": self.config.http_bind, "port": port})
        return found


    def _check_disk(self) -> None:
        """The disk alarm, every second (it clears here once there is room again). Each commit of new messages
        checks it too, before the write (Durability.check_disk)."""
        durability = self.broker.durability
        if durability is not None:
            durability.disk_limit = self.config.disk_free_limit
            durability.check_disk()
        self._disk_timer = asyncio.get_running_loop().call_later(DISK_CHECK_INTERVAL, self._check_disk)

    def _check_memory(self) -> None:
        """The memory alarm's RSS sample (the alarm itself also follows what messages cost as they come)."""
        self.broker.memory.sample()
        self._memory_timer = asyncio.get_running_loop().call_later(MEMORY_CHECK_INTERVAL, self._check_memory)

    def _open_broker(self, loop: asyncio.AbstractEventLoop) -> Broker:
        config = self.config
        started = time.monotonic()
        if config.store != "memory":
            data_dir = Path(config.data_dir)
            try:
                data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # new: the broker's user only
            except OSError as exc:
                raise StoreError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
        if config.store == "sqlite":
            self.store = open_store("sqlite", path=data_dir / "leveret.db", synchronous=config.sqlite_synchronous)
        elif config.store != "memory":  # a postgresql:// URL (docs/cluster.md)
            self.store = open_store("postgresql", url=config.store, connect_retry=config.store_connect_retry,
                                    node=node_name(config), cluster=config.cluster, node_lease=config.node_lease)
        else:
            self.store = open_store("memory")
        audit = AuditLog()
        audit_log = config.audit_log if config.audit_log is not None else str(Path(config.data_dir) / "audit.log")
        if audit_log:
            try:
                audit.open(audit_log)
            except OSError as exc:
                self.store.close()
                raise StoreError(f"cannot open the audit log {audit_log}: {exc.strerror or exc} (set audit_log "
                                 "to another file, or to \"\" for none)") from None
        try:
            broker = Broker(memory_high_watermark=config.memory_high_watermark, default_user=config.default_user,
                            default_pass=config.default_pass, default_vhost=config.default_vhost,
                            loopback_users=config.loopback_users, store=self.store,
                            dispatch=loop.call_soon_threadsafe, queue_memory_budget=config.queue_memory_budget,
                            queue_memory_window=config.queue_memory_window,
                            timers=LoopTimers(loop), audit=audit, tracking_window=config.tracking_window,
                            tracking_max_events=config.tracking_max_events, node_name=node_name(config))
        except BaseException:
            self.store.close()
            audit.close()
            raise
        broker.on_lease_lost = self._lease_lost
        if broker.durability is not None and config.write_hold_ms > 0:  # writes nobody waits for join a confirm's
            broker.durability.hold = config.write_hold_ms / 1000
            broker.durability.timers = broker.timers
        if broker.recovered_queues or broker.recovered_messages:
            log.info("recovered %d queues and %d messages from %s in %.2f s", broker.recovered_queues,
                     broker.recovered_messages, config.store if config.store in STORES else "postgresql",
                     time.monotonic() - started)  # never the URL: it may hold a password
        return broker

    def _lease_lost(self) -> None:
        """Several nodes (docs/cluster.md): the queue leases could not be renewed in time; the broker has closed its
        clients' connections, and the node stops (a supervisor restarts it: it then serves what it can claim)."""
        self.failed = (f"node {self.broker.node_name} stopped: it could not renew its queue leases in the "
                       f"PostgreSQL store within {self.config.node_lease * 2 / 3:g} s (node_lease "
                       f"{self.config.node_lease} s), so other nodes may take its queues over")
        if self.on_failure is not None:
            self.on_failure()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, close every connection with 320 CONNECTION_FORCED, wait up to ``grace`` seconds."""
        self.amqp.close()
        self.stomp.close()
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.https is not None:
            await self.https.stop()
            self.https = None
        if self._disk_timer is not None:
            self._disk_timer.cancel()
        if self._memory_timer is not None:
            self._memory_timer.cancel()
        if self.control is not None:
            await self.control.stop()
        await self.amqp.stop(grace)
        await self.stomp.stop(grace)
        if self.store is not None:
            if self.broker is not None and self.broker.durability is not None:
                self.broker.durability.flush()
            self.store.close()
            self.store = None
        if self.broker is not None:
            self.broker.audit.close()
        log.info("Leveret stopped")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed, the standard one otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve(config: Config) -> int:
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before start(): a signal during start-up still stops cleanly
        loop.add_signal_handler(sig, stop.set)
    node.on_failure = stop.set
    await node.start()
    await stop.wait()
    log.info("shutting down")
    await node.stop()
    if node.failed is not None:
        raise StoreError(node.failed)
    return 0


def serve(config: Config) -> int:
    """Run the broker until SIGINT or SIGTERM; returns the exit code. Raises OSError if it cannot bind."""
    loop = new_event_loop()
    try:
        return loop.run_until_complete(_serve(config))
    finally:
        loop.close()


class ThreadedServer:
    """A Node on its own event loop in a background thread (for tests and embedding in sync code)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = new_event_loop()
        self.server = Node(config)
        self.server.process_rss = False  # the process is the host program's (tests): its RSS is not the broker's
        self._thread = threading.Thread(target=self.loop.run_forever, name="leveret-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_port(self) -> int:
        return self.server.http_port

    @property
    def tls_port(self) -> int:
        return self.server.tls_port

    @property
    def https_port(self) -> int:
        return self.server.https_port

    @property
    def stomp_port(self) -> int:
        return self.server.stomp_port

    @property
    def stomp_tls_port(self) -> int:
        return self.server.stomp_tls_port

    @property
    def broker(self) -> Broker:
        return self.server.broker

    def start(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def call(self, fn: object, *args: object) -> object:
        """Run ``fn(*args)`` on the server's loop and return its result (for inspecting broker state)."""
        async def run() -> object:
            return fn(*args)  # type: ignore[operator]
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=2.0), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def advertised_address(bind: str, port: int) -> str:
    """``host:port`` where clients reach this node (several nodes: told in another node's refusals): the bind
    address, or the host's name when the node listens on every address."""
    host = bind if bind not in ("", "0.0.0.0", "::") else socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
