"""The mail worker: runs mail.send until Ctrl-C / SIGTERM (running attempts finish first).

    python worker.py                     # the same as: cd examples/02-outgoing-email && leveret worker mail:app
"""

import asyncio
import signal

from leveret.tasks import Worker

from mail import app


async def main() -> None:
    worker = Worker(app, concurrency=4)
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, worker.request_stop)
    print(f"mail worker: consuming {', '.join(worker.queues)}", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
