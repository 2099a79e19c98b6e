"""What the worker knows of one task message: ``TaskContext`` (given to hooks and middleware), decoding a
message's body (``decode``, ``BadMessage`` for what cannot run), the error record of an exception
(``error_info``) and copies of a delivered message for its next attempt or its dead letter."""

from __future__ import annotations

import contextlib
import json
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq

if TYPE_CHECKING:
    from leveret.tasks.app import App


@dataclass
class TaskContext:
    """What hooks and middleware receive about the run. ``next_attempt_at``: when the next attempt is due (ISO 8601,
    UTC), when ``will_retry``."""

    id: str
    task: str
    queue: str
    attempt: int
    payload: Any
    will_retry: bool = False
    next_attempt_at: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    app: App | None = None
    # The attempt's deferred "started" event (worker_out.StartedEvent) until another event of the attempt goes.
    start_event: Any = field(default=None, init=False, repr=False, compare=False)


class BadMessage(Exception):
    """A message the worker cannot run: ``reason`` goes to the x-leveret-reason header of its dead letter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def error_info(exc: BaseException, tb: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if tb:
        info["traceback"] = "".join(traceback.format_exception(exc))
    return info


def decode(body: bytes, content_type: str | None, headers: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(payload, metadata) of a task message: JSON ``{"payload": {...}, "metadata": {...}}`` or a binary body
    (payload ``{"data": body}``) with the metadata in ``x-leveret-*`` headers. BadMessage when unreadable."""
    if content_type == "application/octet-stream":
        metadata: dict[str, Any] = {}
        for key, value in headers.items():
            if key.startswith("x-leveret-"):
                raw = value.decode() if isinstance(value, bytes) else value
                try:
                    metadata[key[len("x-leveret-"):]] = json.loads(raw) if isinstance(raw, str) else raw
                except ValueError:
                    metadata[key[len("x-leveret-"):]] = raw
        return {"data": body}, metadata
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadMessage("undecodable", f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadMessage("undecodable", f"the body is a JSON {type(data).__name__}, not an object with "
                                        "\"payload\" and \"metadata\"")
    payload = data.get("payload", {})
    metadata = data.get("metadata", {})
    if not isinstance(payload, dict) or not isinstance(metadata, dict):
        raise BadMessage("undecodable", "\"payload\" and \"metadata\" must be JSON objects")
    return payload, metadata


def copy_message(message: aiormq.abc.DeliveredMessage, attempt: int | None) -> aio_pika.Message:
    """A copy of a delivered message (for attempt ``attempt``, in the body's metadata and ``x-retry-count``,
    when it is given)."""
    props = message.header.properties
    headers = {k: v for k, v in (props.headers or {}).items() if k not in ("x-death", "x-delay")}
    body = message.body
    if attempt is not None:
        headers["x-retry-count"] = attempt
        if props.content_type == "application/octet-stream":
            headers["x-leveret-attempt"] = json.dumps(attempt)
        else:
            with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
                data = json.loads(body)
                data["metadata"]["attempt"] = attempt
                body = json.dumps(data).encode()
    return aio_pika.Message(body, content_type=props.content_type, message_id=props.message_id,
                            correlation_id=props.correlation_id, reply_to=props.reply_to, priority=props.priority,
                            type=props.message_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            headers=headers, timestamp=props.timestamp)


def next_attempt(message: aiormq.abc.DeliveredMessage, attempt: int) -> aio_pika.Message:
    """A copy of ``message`` for attempt number ``attempt``."""
    return copy_message(message, attempt)
