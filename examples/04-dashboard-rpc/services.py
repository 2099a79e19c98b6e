"""Four back-end services answering RPC requests, each on its own queue (they could run on four machines).
`recommendations` is slow on purpose: RECOMMENDATIONS_DELAY seconds (default 3).

    python services.py          # runs all four; `python services.py recommendations` runs only that one
"""

import asyncio
import os
import signal
import sys

from leveret.tasks import App, Worker

URL = os.environ.get("LEVERET_URL", "amqp://guest:guest@127.0.0.1:5672/")
SLOW = float(os.environ.get("RECOMMENDATIONS_DELAY", "3"))

app = App(URL, name="dashboard")


@app.task(name="ads.active", queue="ads")
def active_ads(user: int) -> list[str]:
    return [f"bike #{user}01", f"sofa #{user}02"]


@app.task(name="ads.observed", queue="observed-ads")
def observed_ads(user: int) -> list[str]:
    return [f"camera #{user}77"]


@app.task(name="recommendations.for_user", queue="recommendations")
async def recommendations(user: int) -> list[str]:
    await asyncio.sleep(SLOW)  # a slow model
    return ["tent", "lamp"]


@app.task(name="messages.unread", queue="messages")
def messages(user: int) -> dict:
    return {"unread": 2, "from": ["bob", "eve"]}


async def main(queues: list[str] | None) -> None:
    worker = Worker(app, queues=queues, concurrency=8)
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, worker.request_stop)
    print(f"services: answering {', '.join(worker.queues)}", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or None))
