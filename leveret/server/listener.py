"""The AMQP listeners of a node: the plain and the TLS socket, and the connections they accepted.

:class:`AMQPListener` binds (port 0 picks a free one, see ``port`` and ``tls_port`` after ``start``), makes one
:class:`~leveret.server.amqp.AMQPConnection` per client over the node's :class:`~leveret.core.broker.Broker`,
and on ``stop`` closes every connection with 320 CONNECTION_FORCED. It knows nothing of the management API or
the store: leveret/node.py composes it with them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from leveret.amqp import spec
from leveret.config import Config
from leveret.core.broker import Broker

from .amqp import AMQPConnection
from .edge import EdgeListener
from .tls import handshake_timeout, server_context

log = logging.getLogger("leveret.server")


class AMQPListener(EdgeListener):
    """AMQP over TCP (``config.port``, unless the plain listener is off) and over TLS (``config.tls_port``, when a
    certificate is configured), both over one broker."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker: Broker = None  # type: ignore[assignment]  # given to start(), on the event loop
        self.connections: set[AMQPConnection] = set()
        # TLS (see leveret.server.tls): checked here, so that a bad file stops the broker before it opens anything
        self.ssl_context: ssl.SSLContext | None = server_context(config)
        self.port = config.port if config.plain_listener else -1
        self.tls_port = config.tls_port if self.ssl_context is not None else -1  # the bound AMQPS port
        self._server: asyncio.base_events.Server | None = None
        self._tls_server: asyncio.base_events.Server | None = None

    async def start(self, broker: Broker) -> None:
        """Bind the listeners; OSError (every listener closed again) when an address cannot be bound."""
        self.broker = broker
        loop = asyncio.get_running_loop()
        if self.config.plain_listener:
            self._server = await loop.create_server(lambda: AMQPConnection(self), self.config.bind,
                                                    self.config.port, reuse_address=True, backlog=1024)
            self.port = self._server.sockets[0].getsockname()[1]
        if self.ssl_context is not None:
            await self._start_tls(loop)

    async def _start_tls(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._tls_server = await loop.create_server(
                lambda: AMQPConnection(self), self.config.bind, self.config.tls_port, reuse_address=True,
                backlog=1024, ssl=self.ssl_context, ssl_handshake_timeout=handshake_timeout())
        except OSError as exc:
            self.close()
            host = f"[{self.config.bind}]" if ":" in self.config.bind else self.config.bind
            # the file name slot is what the command line prints before the reason
            raise OSError(exc.errno, exc.strerror, f"cannot listen for AMQP over TLS on {host}:"
                                                   f"{self.config.tls_port}") from None
        self.tls_port = self._tls_server.sockets[0].getsockname()[1]

    def log_listening(self) -> None:
        if self._server is not None:
            log.info("Leveret listening for AMQP on %s:%d", self.config.bind, self.port)
        if self._tls_server is not None:
            log.info("Leveret listening for AMQP over TLS on %s:%d (client certificates: %s)", self.config.bind,
                     self.tls_port, _client_cert_mode(self.config))

    def close(self) -> None:
        """Stop accepting connections (the open ones stay)."""
        for listener in (self._server, self._tls_server):
            if listener is not None:
                listener.close()

    async def stop(self, grace: float) -> None:
        """Close every connection with 320 CONNECTION_FORCED, wait up to ``grace`` seconds for their close-ok,
        abort what is left, and wait for the listeners to close (``close`` first)."""
        for conn in list(self.connections):
            conn.close(spec.CONNECTION_FORCED,
                       "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for listener in (self._server, self._tls_server):
            if listener is not None:
                await listener.wait_closed()

    def listeners(self) -> list[dict[str, object]]:
        """The bound AMQP listeners as the management API lists them."""
        bound = (("amqp", self._server, self.port), ("amqp/ssl", self._tls_server, self.tls_port))
        return [{"node": self.broker.node_name, "protocol": protocol, "ip_address": self.config.bind, "port": port}
                for protocol, listener, port in bound if listener is not None]


def _client_cert_mode(config: Config) -> str:
    if config.tls_verify != "peer":
        return "not asked for"
    return "required" if config.tls_fail_if_no_peer_cert else "verified when given"
