"""The threads that run a worker's sync handlers (``HandlerThreads``), with their outcomes handed back to the
event loop in batches."""

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
        self._completed: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._completed_lock = threading.Lock()
        self._completion_scheduled = False

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
                fn(*args)  # _call_in_thread: hands every outcome to the loop, raises nothing of the handler's
            except BaseException:
                log.exception("handler thread %s", threading.current_thread().name)
            del item, fn, args

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` in a thread, like ``loop.run_in_executor`` but with completions handed back in batches:
        a finishing thread appends its outcome to a deque and wakes the loop only when no wake-up is pending, so
        tasks that end together cost one ``call_soon_threadsafe`` (and no ``concurrent.futures`` chaining)."""
        future = loop.create_future()
        self.submit(self._call_in_thread, loop, future, fn, args)
        return future

    def _call_in_thread(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], fn: Callable[..., Any],
                        args: tuple[Any, ...]) -> None:
        if future.cancelled():  # cancelled before a thread took it (as run_in_executor's would be): not run
            return
        try:
            outcome: tuple[asyncio.Future[Any], Any, BaseException | None] = (future, fn(*args), None)
        except BaseException as exc:  # handed to the awaiting coroutine, as run_in_executor does
            outcome = (future, None, exc)
        self._completed.append(outcome)
        with self._completed_lock:
            if self._completion_scheduled:
                return
            self._completion_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is gone, nobody awaits it
            loop.call_soon_threadsafe(self._complete)

    def _complete(self) -> None:
        with self._completed_lock:
            self._completion_scheduled = False
        completed = self._completed
        while completed:
            future, result, error = completed.popleft()
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
