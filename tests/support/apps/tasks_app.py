"""A task app for the worker subprocess of tests/integration/test_tasks.py (``python -m leveret worker
tasks_app:app`` run from tests/support/apps/): its broker URL, queue and marker file come from the environment."""

from __future__ import annotations

import os
import time

from leveret.tasks import App

app = App(os.environ.get("LEVERET_TASKS_URL", "amqp://guest:guest@127.0.0.1:5672/"), name="killtest",
          status_ttl=120)


@app.task(name=os.environ.get("LEVERET_TASKS_TASK", "slow"), queue=os.environ.get("LEVERET_TASKS_QUEUE", "slow"))
def slow(n: int) -> int:
    """Note each attempt in the marker file; the first attempt hangs (the test kills its worker)."""
    path = os.environ["LEVERET_TASKS_MARKER"]
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        first = len(f.read().splitlines()) == 1
    if first:
        time.sleep(30)
    return n * 2
