"""The route table's rows and matching a request against them.

A vhost ``/`` is written ``%2F`` in paths, as with RabbitMQ, so the raw path is split into segments before
they are decoded; a pattern's ``{name}`` segment becomes the path parameter ``name``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import web

from leveret.management.validation import HTTPFailure

if TYPE_CHECKING:
    from leveret.management.context import Management

    from .call import Call

Handler = Callable[["Management", "Call"], Awaitable[web.Response]]


@dataclass
class Route:
    method: str
    pattern: tuple[str, ...]  # literals, or "{name}" for a path parameter
    handler: Handler
    level: str  # see auth.LEVELS


def match(routes: list[Route], request: web.Request) -> tuple[Route, dict[str, str]]:
    """The route of ``request`` (HEAD as GET) and its decoded path parameters; HTTPFailure 405 when the path
    is known but not the method, 404 when the path is unknown."""
    raw = request.raw_path.split("?", 1)[0]
    segments = raw.split("/")[2:]  # "", "api", ...
    if segments and segments[-1] == "":
        segments.pop()
    allowed: list[str] = []
    for route in routes:
        if len(route.pattern) != len(segments):
            continue
        params: dict[str, str] = {}
        for literal, segment in zip(route.pattern, segments, strict=True):
            if literal.startswith("{"):
                params[literal[1:-1]] = unquote(segment)
            elif literal != segment:
                break
        else:
            if route.method == request.method or (route.method == "GET" and request.method == "HEAD"):
                return route, params
            allowed.append(route.method)
    if allowed:
        raise HTTPFailure(405, "method_not_allowed", f"allowed: {', '.join(allowed)}")
    raise HTTPFailure(404, "Object Not Found", "Not Found")
