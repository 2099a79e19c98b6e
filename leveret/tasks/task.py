"""``Task`` (a registered function: send it, call it), ``Request``, ``Handle`` and ``Group``. See docs/tasks.md.

``Task`` is generic in the function's parameters ``P`` and return type ``R``: ``task.send(...)`` takes the
function's arguments (mypy checks them), binds positional ones to their names and sends keyword payload.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from leveret.tasks.retry import Retry
from leveret.tasks.status import FINAL_STATES

if TYPE_CHECKING:
    from leveret.tasks.app import App
    from leveret.tasks.canvas import Signature

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")


def parse_rate_limit(text: str | None) -> float | None:
    """Tasks per second of a rate limit "10/s", "100/m" or "1000/h" (None: no limit); ValueError otherwise."""
    if text is None:
        return None
    match = RATE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"rate_limit {text!r}: expected '<count>/s', '<count>/m' or '<count>/h', e.g. '10/s'")
    return float(match.group(1)) / {"s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass(eq=False)
class Task(Generic[P, R]):
    """A registered task: ``send``/``delay``/``send_with`` to enqueue, ``call``/``call_sync``/``request`` for RPC."""

    app: App
    name: str
    fn: Callable[P, R]
    queue: str
    retry: Retry
    priority: int | None
    serial: bool
    status: bool = True
    keep_result: bool = True
    soft_time_limit: float | None = None
    time_limit: float | None = None
    rate_limit: str | None = None
    track_started: bool | None = None  # None: the App's track_started
    success_hooks: list[Callable[..., Any]] = field(default_factory=list)
    failure_hooks: list[Callable[..., Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.signature = inspect.signature(self.fn)
        self.rate_per_second = parse_rate_limit(self.rate_limit)
        self.is_async = inspect.iscoroutinefunction(self.fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def on_success(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``hook(ctx, result)``, run by the worker after the handler succeeded."""
        self.success_hooks.append(hook)
        return hook

    def on_failure(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``hook(ctx, exc)``, run by the worker after each failed attempt (``ctx.will_retry``)."""
        self.failure_hooks.append(hook)
        return hook

    # --- the payload --------------------------------------------------------------------------------------------

    def payload(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword payload of a call: positional arguments bound to their names; TypeError naming the task
        when it does not fit the function's signature."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"bad payload for task {self.name!r}: {exc}") from None
        if not args:
            return kwargs
        payload: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"bad payload for task {self.name!r}: *{name} cannot be sent (keyword payload only)")
            if kind is inspect.Parameter.VAR_KEYWORD:
                payload.update(value)
            elif kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(f"bad payload for task {self.name!r}: positional-only {name!r} cannot be sent")
            else:
                payload[name] = value
        return payload

    def check_payload(self, payload: dict[str, Any]) -> None:
        self.payload((), payload)

    # --- sending ---------------------------------------------------------------------------------------------

    def send(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        """Enqueue from synchronous code; returns once the broker has confirmed the message (or, with an
        App(outbox=...), once it is saved in the outbox). Options: ``send_with``."""
        return self.app.submit(self, self.payload(args, kwargs))

    delay = send  # Celery's habit

    async def send_async(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        return await self.app.submit_async(self, self.payload(args, kwargs))

    def s(self, **payload: Any) -> Signature[R]:
        """A signature of this task for workflows (``chain``, ``group``, ``chord``; docs/workflows.md)."""
        from leveret.tasks.canvas import signature

        return signature(self, **payload)

    def send_with(self, payload: dict[str, Any], *, delay: float | None = None, eta: datetime | None = None,
                  priority: int | None = None, task_id: str | None = None,
                  metadata: dict[str, Any] | None = None) -> Handle[R]:
        """``send`` with options: ``delay`` seconds or ``eta`` (an aware datetime), ``priority`` 0-10, a fixed
        ``task_id``, extra ``metadata`` keys (e.g. "link")."""
        self.check_payload(payload)
        return self.app.submit(self, payload, delay=delay, eta=eta, priority=priority, task_id=task_id,
                              metadata=metadata)

    async def send_with_async(self, payload: dict[str, Any], *, delay: float | None = None,
                              eta: datetime | None = None, priority: int | None = None,
                              task_id: str | None = None, metadata: dict[str, Any] | None = None) -> Handle[R]:
        self.check_payload(payload)
        return await self.app.submit_async(self, payload, delay=delay, eta=eta, priority=priority,
                                          task_id=task_id, metadata=metadata)

    def send_bytes(self, data: bytes, *, delay: float | None = None, priority: int | None = None) -> Handle[R]:
        """Enqueue a binary payload (content type application/octet-stream, metadata in headers); the
        handler is called with ``data=<bytes>``."""
        return self.app.submit(self, {"data": data}, delay=delay, priority=priority)

    # --- RPC ---------------------------------------------------------------------------------------------------

    def request(self, *args: P.args, **kwargs: P.kwargs) -> Request:
        """An RPC request, not yet sent: pass several to ``app.gather``."""
        return Request(self, self.payload(args, kwargs))

    async def call(self, *args: Any, timeout: float = 30.0, **kwargs: Any) -> R:
        """Run the task remotely and return its result, or raise ``TaskError``; ``TimeoutError`` (naming the
        task and its id) after ``timeout`` seconds. The payload is checked at run time (``timeout=`` is ours)."""
        result: R = (await self.app.gather([Request(self, self.payload(args, kwargs))], timeout=timeout))[0]
        return result

    def call_sync(self, *args: Any, timeout: float = 30.0, **kwargs: Any) -> R:
        """``call`` from synchronous code."""
        request = Request(self, self.payload(args, kwargs))
        result: R = self.app.run_sync(self.app.gather_requests([request], timeout), timeout + 10)[0]
        return result


@dataclass
class Request:
    task: Task[Any, Any]
    payload: dict[str, Any]


class Handle(Generic[R_co]):
    """What ``send()`` returns: the task id, its status, its result."""

    def __init__(self, app: App, task_id: str, task: str | None = None) -> None:
        self.app = app
        self.id = task_id
        self.task = task

    def __repr__(self) -> str:
        return f"Handle({self.id!r})"

    def status(self) -> str:
        return self.app.status(self.id)

    def info(self) -> dict[str, Any]:
        """Everything recorded about the task (state, attempt, timestamps, error, result...)."""
        return self.app.status_info(self.id)

    def wait(self, timeout: float = 30.0, poll: float = 0.05) -> str:
        """Block until the task is done (succeeded, gave up, revoked); return that state. TimeoutError after
        ``timeout``."""
        return str(self.app.run_sync(self.app.wait_record(self.id, timeout, poll, self.task), timeout + 10)["state"])

    def result(self, timeout: float = 30.0) -> R_co:
        """The task's result once it succeeded (None when it keeps none); TaskError when it gave up or was
        revoked; TimeoutError naming the task and id after ``timeout``."""
        return self.app.result(self.id, timeout)  # type: ignore[no-any-return]

    async def status_async(self) -> str:
        return await self.app.status_async(self.id)

    async def info_async(self) -> dict[str, Any]:
        return await self.app.status_info_async(self.id)

    async def wait_async(self, timeout: float = 30.0, poll: float = 0.05) -> str:
        """``wait`` for async code: does not block the event loop."""
        return str((await self.app.run_async(self.app.wait_record(self.id, timeout, poll, self.task)))["state"])

    async def result_async(self, timeout: float = 30.0) -> R_co:
        return await self.app.result_async(self.id, timeout)  # type: ignore[no-any-return]


class Group:
    """The handles of a multicast: done when every task is."""

    def __init__(self, handles: list[Handle[Any]]) -> None:
        self.handles = handles

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self.handles]

    def status(self) -> str:
        """"succeeded" when all succeeded, "gave_up" when all are done and one did not succeed, "pending"
        otherwise."""
        states = [h.status() for h in self.handles]
        if all(s == "succeeded" for s in states):
            return "succeeded"
        return "gave_up" if all(s in FINAL_STATES for s in states) else "pending"

    def wait(self, timeout: float = 30.0, poll: float = 0.05) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.status()
            if state != "pending":
                return state
            if time.monotonic() >= deadline:
                raise TimeoutError(f"multicast {self.ids} still pending after {timeout} s")
            time.sleep(poll)


async def run_inline(task: Task[Any, Any], payload: dict[str, Any]) -> Any:
    """Run a task's function in the caller's process (App(eager=True))."""
    if task.is_async:
        return await task.fn(**payload)
    return task.fn(**payload)


def run_eager(task: Task[Any, Any], payload: dict[str, Any]) -> Any:
    """``run_inline`` from synchronous code: an async function gets a loop of its own (in a thread when the
    caller is already inside one)."""
    if not task.is_async:
        return task.fn(**payload)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_inline(task, payload))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run_inline(task, payload)).result()
