"""Workflows: the worker's side of ``metadata["link"]`` (docs/tasks.md). When a task succeeds and its message
carries ``{"task", "queue", "payload", "result_arg", "metadata"}``, the linked task is sent as a new task.

``send_link`` is the one place that sends it through the App's producer path, so it can follow that path's
changes."""

from __future__ import annotations

import json
from typing import Any

import aio_pika

from leveret.tasks.app import App, Task


def link_payload(link: dict[str, Any], result: Any) -> dict[str, Any]:
    payload = dict(link.get("payload") or {})
    if link.get("result_arg"):
        payload[str(link["result_arg"])] = result
    return payload


async def send_link(app: App, link: dict[str, Any], result: Any) -> str:
    """Send ``link`` (with the result as ``payload[result_arg]`` and the link's own metadata merged, which may
    hold the next link) through the App; return the new task's id. Runs on the App's own loop."""
    if not isinstance(link, dict) or not link.get("task"):
        raise ValueError(f"bad link {link!r}: needs at least a task name")
    name = str(link["task"])
    task = app.tasks.get(name)
    if task is None:  # a task of another service: send it by name to its queue
        task = Task(app, name, _any_payload, str(link.get("queue") or app.name), app_retry(), None, False)
    payload = link_payload(link, result)
    extra = dict(link.get("metadata") or {})

    async def send() -> str:
        task_id, body, props, _delay = task._build(payload, None, None, None)
        if extra:
            data = json.loads(body)
            data["metadata"].update(extra)
            body = json.dumps(data).encode()
        if task.name in app.tasks:
            await app._ensure_queue(task.queue)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, type=task.name, **props)
        await app._publish(task.queue, message, 0.0)
        return task_id

    return await app._run_async(send())


def _any_payload(**_kwargs: Any) -> None:
    return None


def app_retry() -> Any:
    from leveret.tasks.retry import Retry

    return Retry.ignore()
