"""A consumer added later, without touching the producer: it declares its own queue, binds it to the
`images` exchange, and from then on gets its own copy of every new image.

    python moderate.py
"""

import asyncio
import json
import os
import signal

import aio_pika

URL = os.environ.get("LEVERET_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def main() -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    connection = await aio_pika.connect_robust(URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("images", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("images.moderate", durable=True)
        await queue.bind(exchange, routing_key="image.new")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                event = json.loads(message.body)
                print(f"moderate: image {event['image_id']} of {event['user']} queued for review", flush=True)

        await queue.consume(on_message)
        print("moderate: ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
