"""The worker's side of the supervisor: ``run_worker`` runs one ``Worker`` in this process (``leveret worker
--processes 0``), and, when a supervisor started it, reports to it over the pipe named by
``LEVERET_SUPERVISOR_FD``: one JSON object per line, ``{"event": "ready"}`` once consuming,
``{"event": "tasks", "done": N}`` after each task, ``{"event": "consuming", "consuming": false|true}`` when it
loses its broker connection and when it consumes again (the supervisor reports it unhealthy meanwhile),
``{"event": "recycle", "reason": ...}`` when it stops by itself (max tasks, max memory). A task over its hard
time limit makes it exit with code 75 (EXIT_HARD_TIME_LIMIT) so that the supervisor replaces it.
It also exits when its supervisor is gone (as gunicorn's workers do), so that
killing the supervisor never leaves orphan workers holding messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import sys
from typing import Any

log = logging.getLogger("leveret.supervisor.child")

FD_VARIABLE = "LEVERET_SUPERVISOR_FD"
PID_VARIABLE = "LEVERET_SUPERVISOR_PID"
SLOT_VARIABLE = "LEVERET_SUPERVISOR_SLOT"
PARENT_CHECK_INTERVAL = 0.5


class Reporter:
    """Writes events to the supervisor. Never blocks and never fails: a full or closed pipe drops the line (the
    counts are cumulative, so the next line repairs a lost one)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    @classmethod
    def from_env(cls) -> Reporter | None:
        """The reporter named by ``LEVERET_SUPERVISOR_FD``; the variables are removed from the environment and
        the descriptor is not inherited, so that what this process starts does not take them for its own."""
        value = os.environ.pop(FD_VARIABLE, None)
        os.environ.pop(PID_VARIABLE, None)
        if not value:
            return None
        try:
            reporter = cls(int(value))
            os.set_inheritable(reporter.fd, False)
            return reporter
        except (ValueError, OSError):
            log.warning("ignoring %s=%r: not an open file descriptor", FD_VARIABLE, value)
            return None

    def reader_gone(self) -> bool:
        """True once nobody holds the pipe's reading end (the supervisor is gone)."""
        poller = select.poll()
        poller.register(self.fd, 0)  # POLLERR on a pipe's writing end: no reader left
        with contextlib.suppress(OSError):
            return any(mask & (select.POLLERR | select.POLLNVAL) for _fd, mask in poller.poll(0))
        return False

    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}).encode() + b"\n"
        with contextlib.suppress(OSError):  # a line shorter than PIPE_BUF is written whole or not at all
            os.write(self.fd, line)


def rss_mb(pid: int | None = None) -> float | None:
    """Resident set size of ``pid`` (default: this process) in MB, from /proc; None where unavailable."""
    try:
        with open(f"/proc/{pid or 'self'}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_worker(app: Any, *, queues: list[str] | None, concurrency: int, prefetch: int | None, grace: float,
               max_tasks: int | None, max_memory: float | None) -> int:
    """Run a Worker in this process until SIGTERM/SIGINT (or its max_tasks / max_memory); return the exit code.

    When handlers are still running after ``grace`` (their messages were not acked and go back to the queue
    when the connection closes), the process exits at once rather than wait for their threads."""
    from leveret.tasks import Worker

    reporter = Reporter.from_env()
    parent_pid = os.getppid() if reporter else 0  # the supervisor, or a command it ran (sh -c "cd x && ...")
    slot = os.environ.pop(SLOT_VARIABLE, None)
    if reporter and slot:  # say which process a line comes from, as the supervisor's lines do
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {slot} pid %(process)d "
                                                   "%(name)s: %(message)s"))

    def on_event(event: str, worker: Worker) -> None:
        if event == "ready":
            log.info("consuming %s (concurrency %d)", ", ".join(worker.queues), worker.concurrency)
            if reporter:
                reporter.send("ready", queues=worker.queues)
        elif event in ("consuming", "not_consuming"):
            if event == "not_consuming":
                log.warning("not consuming: no connection to the broker (reconnecting)")
            if reporter:
                reporter.send("consuming", consuming=worker.consuming)
        elif event == "task_done":
            if reporter:
                reporter.send("tasks", done=worker.tasks_done)
            if max_memory is not None and not reporter:
                rss = rss_mb()
                if rss is not None and rss > max_memory:
                    log.warning("RSS %.0f MB > max memory %g MB after %d tasks: stopping", rss, max_memory,
                                worker.tasks_done)
                    worker.request_stop()
        elif event == "max_tasks":
            log.info("started %d tasks (max tasks): stopping after they finish", worker.tasks_started)
            if reporter:
                reporter.send("recycle", reason=f"max_tasks {worker.max_tasks} reached")

    worker = Worker(app, queues=queues, concurrency=concurrency, prefetch=prefetch, grace=grace,
                    max_tasks=max_tasks, on_event=on_event)

    async def watch_parent() -> None:
        while True:
            await asyncio.sleep(PARENT_CHECK_INTERVAL)
            assert reporter is not None
            if os.getppid() != parent_pid or reporter.reader_gone():
                log.error("the supervisor is gone (parent pid %d): exiting now (unacked tasks go back to the "
                          "queue)", parent_pid)
                _exit_now(1)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.request_stop)
        watcher = asyncio.ensure_future(watch_parent()) if reporter else None
        try:
            await worker.run()
        finally:
            if watcher is not None:
                watcher.cancel()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    if worker.exit_code:
        _exit_now(worker.exit_code)  # a task over its hard time limit may still hold a thread: do not wait for it
    if worker.unfinished:
        _exit_now(0)  # handler threads still run; their messages are requeued: do not wait for them
    return 0


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
