"""``App.pipeline()``: many sends from one synchronous thread with their publisher confirms in flight together.

``task.send()`` returns once the broker has confirmed the message: one round trip (and, on a durable broker, one
disk write) per task, so one thread sends at most a few thousand tasks a second. A pipeline's ``send`` returns
as soon as the message is handed to the App's connection; up to ``window`` confirms are awaited at once, and
``flush()`` (or leaving the ``with`` block) waits for the rest. Nothing is given up: a task the broker refused,
or whose confirm was lost with the connection, is reported by the next ``send`` or by ``flush`` with
``PipelineError`` (its ids), never dropped silently. See docs/tasks.md ("Sending many tasks").
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from leveret.tasks.connection import BrokerUnavailable
from leveret.tasks.task import Handle, Task

if TYPE_CHECKING:
    from leveret.tasks.app import App

P = ParamSpec("P")
R = TypeVar("R")


class PipelineError(BrokerUnavailable):
    """Tasks of a pipeline were not confirmed: ``failed`` maps each task id to its error (refused by the broker,
    or the connection was lost before its confirm: it may or may not be queued)."""

    def __init__(self, message: str, failed: dict[str, BaseException]) -> None:
        super().__init__(message)
        self.failed = failed


class Pipeline:
    """Made by ``App.pipeline(window)``; use it from one thread at a time (not from the App's own loop)."""

    def __init__(self, app: App, window: int = 1000) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.app = app
        self.window = window
        self.sent = 0  # handed to the connection
        self.confirmed = 0  # acked by the broker
        self._in_flight = 0
        self._failed: dict[str, BaseException] = {}  # failures not raised yet (each is raised once)
        self._progress = time.monotonic()  # the last confirm (or send, when nothing was in flight)
        self._cond = threading.Condition(threading.Lock())

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.flush()
        else:  # the block failed: still wait for what is in flight, but let the block's error through
            with contextlib.suppress(BrokerUnavailable):
                self.flush()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def send(self, task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        """``task.send(*args, **kwargs)`` without waiting for its confirm (unless ``window`` confirms are
        already awaited). The payload is checked against the task's signature here, as by ``task.send``."""
        return self._send(task, task.payload(args, kwargs), {})

    def send_with(self, task: Task[Any, R], payload: dict[str, Any], **options: Any) -> Handle[R]:
        """``task.send_with`` in the pipeline (``delay``, ``eta``, ``priority``, ``task_id``, ``metadata``). A
        delayed task, an eager App and an App with an outbox do not pipeline: they send as ``send_with`` does."""
        task.check_payload(payload)
        return self._send(task, payload, options)

    def _send(self, task: Task[Any, R], payload: dict[str, Any], options: dict[str, Any]) -> Handle[R]:
        """A payload already checked against the task's signature."""
        self._raise_failed()
        app = self.app
        if app.eager or app.outbox_path is not None or options.get("delay") or options.get("eta"):
            handle = app.submit(task, payload, **options)
            self.sent += 1
            self.confirmed += 1
            return handle
        built = app.build_message(task, payload, **options)
        self._wait_below(self.window)
        with self._cond:
            if self._in_flight == 0:
                self._progress = time.monotonic()
            self._in_flight += 1
        task_id = built[0]

        def done(value: Any, error: BaseException | None) -> None:  # on the App's loop
            with self._cond:
                self._in_flight -= 1
                self._progress = time.monotonic()
                if error is None:
                    self.confirmed += 1
                else:
                    self._failed[task_id] = error
                self._cond.notify_all()

        try:
            app.submit_built(task, built, done)
        except BaseException:
            with self._cond:
                self._in_flight -= 1
            raise
        self.sent += 1
        return Handle(app, task_id, task.name)

    def flush(self) -> None:
        """Wait until every send so far is confirmed; ``PipelineError`` names those that were not."""
        self._wait_below(1)
        self._raise_failed()

    def _wait_below(self, limit: int) -> None:
        """Wait until fewer than ``limit`` confirms are awaited. A confirm settles within the App's
        ``send_timeout`` (the connection's loss fails what it carried), so no progress for longer is an error."""
        patience = self.app.send_timeout + 1
        with self._cond:
            while self._in_flight >= limit:
                left = self._progress + patience - time.monotonic()
                if left <= 0:
                    raise BrokerUnavailable(
                        f"{self._in_flight} tasks of the pipeline not confirmed by the broker at {self.app.url} "
                        f"within {self.app.send_timeout:g} s")
                self._cond.wait(left)

    def _raise_failed(self) -> None:
        with self._cond:
            if not self._failed:
                return
            failed, self._failed = self._failed, {}
        first_id, first = next(iter(failed.items()))
        raise PipelineError(f"{len(failed)} task(s) of the pipeline not confirmed (the first, {first_id}: {first})",
                            failed)
