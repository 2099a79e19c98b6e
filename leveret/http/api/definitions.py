"""Handlers of ``/api/definitions``: export (``?download=name`` for an attachment) and import, in RabbitMQ's
format; the format itself is ``leveret/management/definitions.py``."""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from leveret.management.context import Management
from leveret.management.definitions import export, import_audited

from .call import Call, reply


async def get_definitions(api: Management, call: Call) -> web.Response:
    """``?download=name`` makes it an attachment called ``name``."""
    response = reply(export(api))
    name = call.request.query.get("download")
    if name:  # the name as given (RFC 6266 filename*) and a plain ASCII fallback: no header injection
        plain = re.sub(r'[^\x20-\x7e]|["\\]', "_", name)
        response.headers["Content-Disposition"] = \
            f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"
    return response


async def post_definitions(api: Management, call: Call) -> web.Response:
    import_audited(api, await call.body())
    return reply(None, 204)
