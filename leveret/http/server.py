"""The management HTTP server: an aiohttp application on the broker's event loop.

``ManagementServer(broker, ...)`` is started by :class:`leveret.node.Node` when ``http_port`` is not
-1. Handlers run on the same loop as the core, so they call it directly (no threads, no locks).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from leveret.core.broker import Broker, Session

from .api.app import ManagementAPI

log = logging.getLogger("leveret.http")


class ManagementServer:
    def __init__(self, broker: Broker, bind: str, port: int, *, sessions: Callable[[], list[Session]],
                 listeners: Callable[[], list[dict[str, Any]]], ssl_context: ssl.SSLContext | None = None,
                 metrics_auth: bool = False) -> None:
        self.api = ManagementAPI(broker, sessions=sessions, listeners=listeners, metrics_auth=metrics_auth)
        self.bind = bind
        self.port = port
        self._runner: web.AppRunner | None = None
        self.ssl_context = ssl_context  # HTTPS when set (leveret.server.tls.server_context)

    async def start(self) -> None:
        """Bind and serve; ``self.port`` is the bound port afterwards. Raises OSError when it cannot bind."""
        runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.bind, self.port, reuse_address=True, ssl_context=self.ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            host = f"[{self.bind}]" if ":" in self.bind else self.bind
            # the file name slot is what the command line prints before the reason
            scheme = "HTTPS" if self.ssl_context is not None else "HTTP"
            raise OSError(exc.errno, exc.strerror, f"cannot listen for {scheme} on {host}:{self.port}") from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:  # the bound (host, port, ...) of each socket
            self.port = runner.addresses[0][1]
        log.info("Leveret management API listening on %s://%s:%d/", "https" if self.ssl_context else "http", self.bind,
                 self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
