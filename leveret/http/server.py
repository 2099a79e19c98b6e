"""The management HTTP server: an aiohttp application on the broker's event loop.

``ManagementServer(broker, ...)`` is started by :class:`leveret.server.app.Server` when ``http_port`` is not
-1. Handlers run on the same loop as the core, so they call it directly (no threads, no locks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from leveret.core.broker import Broker, Session

from .api import ManagementAPI

log = logging.getLogger("leveret.http")


class ManagementServer:
    def __init__(self, broker: Broker, bind: str, port: int, *, sessions: Callable[[], list[Session]],
                 listeners: Callable[[], list[dict[str, Any]]]) -> None:
        self.api = ManagementAPI(broker, sessions=sessions, listeners=listeners)
        self.bind = bind
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve; ``self.port`` is the bound port afterwards. Raises OSError when it cannot bind."""
        runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.bind, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            host = f"[{self.bind}]" if ":" in self.bind else self.bind
            # the file name slot is what the command line prints before the reason
            raise OSError(exc.errno, exc.strerror, f"cannot listen for HTTP on {host}:{self.port}") from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("Leveret management API listening on http://%s:%d/", self.bind, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
