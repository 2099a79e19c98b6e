"""The management HTTP server: an aiohttp application on the broker's event loop, loaded at its first connection.

``ManagementServer(broker, ...)`` is started by :class:`leveret.node.Node` when ``http_port`` is not
-1. Handlers run on the same loop as the core, so they call it directly (no threads, no locks).

``start()`` binds and listens at once (so the port, its errors and the log line are those of the start) and
starts the overview's chart samples, but aiohttp and the API's modules (~16 MiB, half as much again as an idle
broker, and 0.13 s of CPU) are imported only when the first connection is made, on a worker thread: the loop
keeps serving AMQP and STOMP meanwhile. Connections made before the application is ready keep what they send,
reading paused, and are handed to aiohttp's request handler once it is; after that, aiohttp's handler takes
each connection directly. A client sees the same answers, the first one ~0.2 s later (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from leveret.core.broker import Broker, Session
from leveret.management.context import Management

if TYPE_CHECKING:
    from aiohttp import web

    from .api.app import ManagementAPI

log = logging.getLogger("leveret.http")
BACKLOG = 128  # as aiohttp's TCPSite


class ManagementServer:
    def __init__(self, broker: Broker, bind: str, port: int, *, sessions: Callable[[], list[Session]],
                 listeners: Callable[[], list[dict[str, Any]]], ssl_context: ssl.SSLContext | None = None,
                 metrics_auth: bool = False) -> None:
        self.management = Management(broker, sessions=sessions, listeners=listeners)
        self.metrics_auth = metrics_auth
        self.bind = bind
        self.port = port
        self.ssl_context = ssl_context  # HTTPS when set (leveret.server.tls.server_context)
        self.api: ManagementAPI | None = None  # the routes and handlers, once loaded
        self._listener: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None  # once the application is loaded
        self._loading: asyncio.Task[None] | None = None
        self.waiting: set[_Waiting] = set()  # connections made before the application was loaded
        self._history: AsyncIterator[None] | None = None

    async def start(self) -> None:
        """Bind and serve; ``self.port`` is the bound port afterwards. Raises OSError when it cannot bind."""
        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(self._protocol, self.bind, self.port, ssl=self.ssl_context,
                                                      backlog=BACKLOG, reuse_address=True)
        except OSError as exc:
            host = f"[{self.bind}]" if ":" in self.bind else self.bind
            # the file name slot is what the command line prints before the reason
            scheme = "HTTPS" if self.ssl_context is not None else "HTTP"
            raise OSError(exc.errno, exc.strerror, f"cannot listen for {scheme} on {host}:{self.port}") from None
        if self._listener.sockets:  # the bound (host, port, ...) of each socket
            self.port = self._listener.sockets[0].getsockname()[1]
        self._history = self.management.history.running(None)  # the overview's chart samples, from the start
        await anext(self._history)
        log.info("Leveret management API listening on %s://%s:%d/", "https" if self.ssl_context else "http", self.bind,
                 self.port)

    def _protocol(self) -> asyncio.BaseProtocol:
        """The listener's protocol factory: aiohttp's request handler once the application is loaded."""
        if self._runner is not None and self._runner.server is not None:
            return self._runner.server()
        return _Waiting(self)

    def _arrived(self, waiting: _Waiting) -> None:
        """A connection made before the application was loaded (over TLS: once its handshake is done, which may
        be after the loading ended): handed over now, or once the application is loaded."""
        if self._runner is not None and self._runner.server is not None:
            waiting.hand_over(self._runner.server())
            return
        self.waiting.add(waiting)
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        """Import aiohttp and the API on a worker thread, set the application up, hand the waiting connections
        over. On failure the waiting connections are closed and the next connection tries again."""
        try:
            loop = asyncio.get_running_loop()
            module = await loop.run_in_executor(None, importlib.import_module, "leveret.http.api.app")
            from aiohttp import web

            api = module.ManagementAPI(self.management, metrics_auth=self.metrics_auth)
            runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
            await runner.setup()
        except Exception:
            log.exception("management API: cannot load the application")
            self._loading = None
            self._close_waiting()
            return
        self.api, self._runner = api, runner
        waiting, self.waiting = self.waiting, set()
        for connection in waiting:
            connection.hand_over(runner.server())  # type: ignore[misc]  # set up: not None

    def _close_waiting(self) -> None:
        waiting, self.waiting = self.waiting, set()
        for connection in waiting:
            connection.close()

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._loading is not None and not self._loading.done():
            await asyncio.wait([self._loading])  # an import on a worker thread cannot be cancelled
        self._close_waiting()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._history is not None:
            await anext(self._history, None)  # stops the samples
            self._history = None


class _Waiting(asyncio.Protocol):
    """A connection made before the application was loaded: what it sends is kept, with reading paused
    (uvloop starts reading after ``connection_made`` whatever it did), until it is handed over."""

    def __init__(self, server: ManagementServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.received: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's transport
        transport.pause_reading()  # type: ignore[attr-defined]
        self.server._arrived(self)

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return True  # open until the handler has seen it

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.waiting.discard(self)

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        """Let ``protocol`` take the connection as if it had been made for it: what was received, then reading."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        for data in self.received:
            protocol.data_received(data)
        if not self.eof:
            transport.resume_reading()
        elif not protocol.eof_received():
            transport.close()  # as the transport does when eof_received() returns false

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
