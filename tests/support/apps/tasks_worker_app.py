"""A task app for the worker subprocesses of tests/integration/test_tasks_worker.py (``python -m leveret worker
tasks_worker_app:app`` run from tests/support/apps/): broker URL and queue come from the environment."""

from __future__ import annotations

import os
import time

from leveret.tasks import App

app = App(os.environ.get("LEVERET_TW_URL", "amqp://guest:guest@127.0.0.1:5672/"), name="tw-sub", status_ttl=60)


@app.task(name="tw.hang", queue=os.environ.get("LEVERET_TW_QUEUE", "tw-sub"), time_limit=0.5)
def hang() -> None:
    """Runs past its hard time limit: the worker process exits with EXIT_HARD_TIME_LIMIT."""
    time.sleep(60)


@app.task(name="tw.noop", queue=os.environ.get("LEVERET_TW_QUEUE", "tw-sub"))
def noop() -> None:
    return None
