"""Workflows: the worker's side of ``metadata["link"]`` (docs/tasks.md). When a task succeeds and its message
carries ``{"task", "queue", "payload", "result_arg", "metadata"}``, the linked task is sent as a new task.

``send_link`` is the one place that sends it through the App's producer path, so it can follow that path's
changes."""

from __future__ import annotations

from typing import Any

from leveret.tasks.app import App, Task
from leveret.tasks.retry import Retry


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
        task = Task(app, name, _any_payload, str(link.get("queue") or app.name), Retry.ignore(), None, False)
    payload = link_payload(link, result)
    handle = await task.send_with_async(payload, task_id=link.get("task_id") or None,
                                        metadata=dict(link.get("metadata") or {}))
    return handle.id


def _any_payload(**_kwargs: Any) -> None:
    return None
