"""TEST-ONLY ADAPTER — INTEGRATOR: delete this file (and its imports in tests/test_periodic.py and
tests/periodic_app.py) once the task-layer rewrite with ``Task.send_with`` (contract of issue 11) is merged.

``Task.send_with(payload, *, delay=None, eta=None, priority=None, task_id=None, metadata=None)`` for the seed's
Task, so that the Scheduler (which calls the contract's ``send_with``) can be tested before that merge. It goes
through the seed's own send path (``Task._build``, status "queued", ``App._publish``), with the id and metadata
replaced. Installed only when Task has no ``send_with``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aio_pika

from leveret.tasks.app import Handle, Task


def install() -> None:
    if hasattr(Task, "send_with"):
        return

    def send_with(self: Task, payload: dict[str, Any], *, delay: float | None = None, eta: datetime | None = None,
                  priority: int | None = None, task_id: str | None = None,
                  metadata: dict[str, Any] | None = None) -> Handle:
        async def send() -> Handle:
            tid, body, props, wait = self._build(payload, delay, eta, priority)
            tid = task_id or tid
            data = json.loads(body)
            data["metadata"].update(metadata or {}, id=tid)
            props.update(message_id=tid, correlation_id=tid)
            app = self.app
            await app._ensure_queue(self.queue)
            await app._write_status(tid, "queued", {"task": self.name})
            message = aio_pika.Message(json.dumps(data).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                       **props)
            await app._publish(self.queue, message, wait)
            return Handle(app, tid)

        return self.app._run_sync(send())

    Task.send_with = send_with  # type: ignore[attr-defined]
