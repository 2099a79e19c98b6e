"""Middleware hooks (``App.add_middleware``): an object may define any of ``before_task(ctx)``,
``after_task(ctx, result, exc)`` (exc None on success) and ``on_retry(ctx, exc, delay)``, sync or async. The
worker calls sync hooks in its thread pool and async ones on its loop; a hook that raises is logged (logger
``leveret.tasks.worker``) and never fails the task."""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import Executor
from typing import Any

log = logging.getLogger("leveret.tasks.worker")


async def call_hooks(middleware: list[Any], hook: str, pool: Executor, *args: Any) -> None:
    loop = asyncio.get_running_loop()
    for m in middleware:
        fn = getattr(m, hook, None)
        if fn is None:
            continue
        try:
            if inspect.iscoroutinefunction(fn):
                await fn(*args)
            else:
                await loop.run_in_executor(pool, fn, *args)
        except Exception:
            log.exception("middleware %r.%s failed (ignored)", m, hook)
