"""Leveret's own read-outs of what happened: ``/api/tracking/{vhost}/{message_id}`` (message tracking,
core/tracking.py, docs/operations.md) and ``/api/task-status/{vhost}/{id}`` (the status book, core/status.py,
docs/extensions.md)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from leveret.management.context import Management
from leveret.management.validation import HTTPFailure, bad_request

from .call import Call, reply


async def get_tracking(api: Management, call: Call) -> web.Response:
    """What happened to the messages with this message_id."""
    vhost = api.vhost(call.params["vhost"])
    tracker = api.broker.tracker
    if tracker is None:
        raise bad_request("message tracking is off (tracking_window or tracking_max_events is 0)")
    return reply(tracker.events_or_raise(vhost.name, call.params["message_id"]))


async def get_task_status(api: Management, call: Call) -> web.Response:
    """The status record of a task id (503 when the store cannot be read, 404 when there is none)."""
    vhost = api.vhost(call.params["vhost"])
    task_id = call.params["id"]
    answered: asyncio.Future[tuple[Any, BaseException | None]] = asyncio.get_running_loop().create_future()

    def done(records: Any, exc: BaseException | None) -> None:
        if not answered.done():
            answered.set_result((records, exc))

    api.broker.status.lookup(vhost.name, [task_id], done)
    records, exc = await answered
    if exc is not None:
        raise HTTPFailure(503, "store_failed", f"reading the status record failed: {exc}")
    record = records.get(task_id)
    if record is None:
        raise HTTPFailure(404, "not_found", f"no status record for task '{task_id}' in vhost '{vhost.name}' "
                                            "(unknown, or expired)")
    return reply(record.public())
