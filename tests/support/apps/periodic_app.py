"""A leveret.tasks App with one periodic task, for `leveret beat periodic_app:app` subprocesses in
tests/integration/test_periodic.py. Configured by the environment: PERIODIC_URL, PERIODIC_APP (the app's name, also the
task's queue), PERIODIC_EVERY (seconds)."""

from __future__ import annotations

import os

from leveret.tasks import App
from leveret.tasks.periodic import periodic

app = App(os.environ["PERIODIC_URL"], name=os.environ["PERIODIC_APP"], status_ttl=120)


@periodic(app, every=float(os.environ.get("PERIODIC_EVERY", "0.5")), name="tick", payload={"n": 1})
def tick(n: int) -> None:
    pass
