"""The management web page: static HTML, JavaScript and CSS from ``leveret/http/static/`` (package data, no
build step, nothing loaded from elsewhere), served at ``/`` as RabbitMQ serves its UI at the root of 15672.
The page itself is public; everything it shows comes from the authenticated ``/api/``."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from . import STARTED

STATIC = Path(__file__).parent / "static"
HEADERS = {
    # the page's own files only: no inline script, no other origin, not framed by another site
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=HEADERS)


def add_routes(application: web.Application) -> None:
    application.router.add_get("/", index)
    application.router.add_static("/static/", STATIC, append_version=False)


def node_health() -> dict[str, Any]:
    """RabbitMQ's node fields the page's health panel shows beside the memory and alarms: file descriptors in
    use and the limit (``fd_used``/``fd_total``; -1 where /proc is absent) and ``uptime`` in milliseconds."""
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = -1
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"fd_used": used, "fd_total": soft, "uptime": int((time.monotonic() - STARTED) * 1000)}
