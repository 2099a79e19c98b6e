"""The management API's list of recent tasks for the web page's Tasks view: ``GET /api/tasks/{vhost}``.

Leveret's own endpoint (RabbitMQ has no task layer): the records of the status book (core/status.py) whose
tasks changed most recently, newest first, each as ``GET /api/task-status/{vhost}/{id}`` answers it.
``?state=failed`` keeps one state (queued, started, retrying, failed, succeeded, gave_up, revoked);
``?limit=`` is 1..1000 (default 200). The book remembers the last 1,000 task ids it recorded since the broker
started; older tasks are still found by id (``task-status``).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from leveret.core.status_record import RANKS

if TYPE_CHECKING:
    from leveret.core.broker import Broker, VHost


class Context(Protocol):
    """What the handler needs of the API's shared context: the broker and a vhost lookup (404 when missing)."""

    broker: Broker

    def vhost(self, name: str) -> VHost: ...


class Request(Protocol):
    """What the handler needs of one call: its path parameters and the aiohttp request (for the query)."""

    params: dict[str, str]
    request: web.Request

DEFAULT_LIMIT = 200
MAX_LIMIT = 1000


def _answer(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(value, default=str), content_type="application/json")


async def list_tasks(api: Context, call: Request) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    query = call.request.query
    state = query.get("state") or None
    if state is not None and state not in RANKS:
        return _answer({"error": "bad_request", "reason": f"unknown state '{state}'; one of {', '.join(RANKS)}"},
                       400)
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return _answer({"error": "bad_request", "reason": f"'limit' must be 1..{MAX_LIMIT}"}, 400)
    book = api.broker.status
    ids = book.recent(vhost.name, MAX_LIMIT)
    answered: asyncio.Future[tuple[Any, BaseException | None]] = asyncio.get_running_loop().create_future()

    def done(records: Any, exc: BaseException | None) -> None:
        if not answered.done():
            answered.set_result((records, exc))

    book.lookup(vhost.name, ids, done)
    records, exc = await answered
    if exc is not None:
        return _answer({"error": "store_failed", "reason": f"reading the status records failed: {exc}"}, 503)
    found = []
    for task_id in ids:
        record = records.get(task_id)
        if record is not None and (state is None or record.state == state):
            found.append(record.public())
            if len(found) >= limit:
                break
    return _answer(found)
