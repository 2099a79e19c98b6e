"""The threads that run a worker's sync handlers (``HandlerThreads``), the worker's concurrency slots shared by
those threads and its event loop (``Slots``), and the hand-back of what the threads did to the loop in batches
(``HandlerThreads.post``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue as queue_mod
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("leveret.tasks.worker")


class Slots:
    """``size`` slots (the worker's concurrency) and the FIFO of prepared jobs waiting for one.

    Thread-safe: a handler thread that finishes a task takes the next waiting job itself (``next_or_release``)
    and keeps its slot, so a busy worker starts its next task without waiting for an event-loop turn (as
    Dramatiq's worker threads take their next message from a local queue); the loop offers every delivered
    message (``take_or_queue``) and hands a slot to a job that must run on the loop."""

    __slots__ = ("free", "lock", "size", "waiting")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self.waiting: deque[Any] = deque()
        self.lock = threading.Lock()

    def take_or_queue(self, job: Any) -> bool:
        """True: ``job`` has a slot now; False: it waits (FIFO) until a slot holder hands it its slot."""
        with self.lock:
            if self.free > 0 and not self.waiting:
                self.free -= 1
                return True
            self.waiting.append(job)
            return False

    def next_or_release(self) -> Any:
        """For a slot holder that finished: the next waiting job (which now holds the slot), or None when none
        waits (the slot is free again)."""
        with self.lock:
            if self.waiting:
                return self.waiting.popleft()
            self.free += 1
            return None

    def clear_waiting(self) -> list[Any]:
        """Take every waiting job out (stopping: they go back to the broker)."""
        with self.lock:
            jobs = list(self.waiting)
            self.waiting.clear()
            return jobs

    @property
    def busy(self) -> int:
        """Slots held (handlers running, or about to start)."""
        return self.size - self.free


class HandlerThreads:
    """The threads that run sync handlers: one started per submit until there are ``size``, fed by one
    ``SimpleQueue``.

    Lighter than a ``ThreadPoolExecutor`` per task (no ``concurrent.futures.Future``, work item or idle
    semaphore, each of which takes Python-level locks while holding the GIL). Like the executor's, the threads
    are not daemons: at interpreter exit, handlers still running finish first. ``shutdown()`` lets each thread
    end once the queue is empty."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._queue: queue_mod.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue_mod.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._posted: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._posted_lock = threading.Lock()
        self._post_scheduled = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if len(self._threads) < self.size:  # no count of idle threads to keep in step across threads
            thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}")
            thread.start()
            self._threads.append(thread)
        self._queue.put((fn, args))

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)  # hands every outcome to the loop (post), raises nothing of the handler's
            except BaseException:
                log.exception("handler thread %s", threading.current_thread().name)
            del item, fn, args

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []

    def post(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
        """From a handler thread: ``fn(*args)`` on ``loop``, in the order posted. The loop is woken only when no
        wake-up is pending, so what several threads post together costs one ``call_soon_threadsafe``."""
        self._posted.append((fn, args))
        with self._posted_lock:
            if self._post_scheduled:
                return
            self._post_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is gone, nobody awaits it
            loop.call_soon_threadsafe(self._run_posted)

    @property
    def posting(self) -> bool:
        """Something posted is not yet run on the loop."""
        return bool(self._posted)

    def _run_posted(self) -> None:
        with self._posted_lock:
            self._post_scheduled = False
        posted = self._posted
        while posted:
            fn, args = posted.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("handing back a handler's outcome")

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` in a thread, like ``loop.run_in_executor`` but with completions handed back in batches
        (``post``, no ``concurrent.futures`` chaining)."""
        future = loop.create_future()
        self.submit(self._call_in_thread, loop, future, fn, args)
        return future

    def _call_in_thread(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], fn: Callable[..., Any],
                        args: tuple[Any, ...]) -> None:
        if future.cancelled():  # cancelled before a thread took it (as run_in_executor's would be): not run
            return
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine, as run_in_executor does
            result, error = None, exc
        self.post(loop, _settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
