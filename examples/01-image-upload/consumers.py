"""Independent consumers of the `new_image` event. Each one has its own durable queue bound to the `images`
exchange, so each gets its own copy of every event, keeps it while it is stopped, and fails on its own.

    python consumers.py resize notify points log      # one process for the demo; one each in production

Run the same role twice and the two processes share its queue (competing consumers).
"""

import asyncio
import json
import os
import signal
import sys
from collections import Counter

import aio_pika

URL = os.environ.get("LEVERET_URL", "amqp://guest:guest@127.0.0.1:5672/")
EXCHANGE = "images"

points: Counter[str] = Counter()


# The work: stand-ins that print what a real service would do.

def resize(event: dict) -> str:
    return f"image {event['image_id']} ({event['path']}): made 1024px, 320px and 64px versions"


def notify(event: dict) -> str:
    return f"told the friends of {event['user']} about image {event['image_id']}"


def award_points(event: dict) -> str:
    points[event["user"]] += 10
    return f"{event['user']} has {points[event['user']]} points (image {event['image_id']})"


def log(event: dict) -> str:
    return f"{event['event']} {json.dumps(event, sort_keys=True)}"


# role -> (handler, routing key it binds with): "log" takes every image.* event, the others only image.new.
ROLES = {
    "resize": (resize, "image.new"),
    "notify": (notify, "image.new"),
    "points": (award_points, "image.new"),
    "log": (log, "image.*"),
}


async def consume(channel: aio_pika.abc.AbstractChannel, role: str) -> None:
    handler, routing_key = ROLES[role]
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"images.{role}", durable=True)
    await queue.bind(exchange, routing_key=routing_key)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        # Acked when the block ends, rejected (dropped) if the handler raises: see 02 for retries.
        async with message.process():
            print(f"{role}: {handler(json.loads(message.body))}", flush=True)

    await queue.consume(on_message)
    print(f"{role}: ready", flush=True)


async def main(roles: list[str]) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    connection = await aio_pika.connect_robust(URL)  # reconnects (and re-declares) after a broker restart
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=10)
        for role in roles:
            await consume(channel, role)
        await stop.wait()  # closing the connection returns unacked messages to their queues


if __name__ == "__main__":
    wanted = sys.argv[1:] or list(ROLES)
    unknown = set(wanted) - set(ROLES)
    if unknown:
        sys.exit(f"unknown role(s) {', '.join(sorted(unknown))}; choose from {', '.join(ROLES)}")
    asyncio.run(main(wanted))
