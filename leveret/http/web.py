"""The management web page: static HTML, JavaScript and CSS from ``leveret/http/static/`` (package data, no
build step, nothing loaded from elsewhere), served at ``/`` as RabbitMQ serves its UI at the root of 15672.
The page itself is public; everything it shows comes from the authenticated ``/api/``."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

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
