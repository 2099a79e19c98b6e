"""The producer: announce one `new_image` event and return. It knows nothing about who listens.

    python upload.py cat.jpg --user ann
"""

import argparse
import asyncio
import json
import os
import uuid
from datetime import UTC, datetime

import aio_pika

URL = os.environ.get("LEVERET_URL", "amqp://guest:guest@127.0.0.1:5672/")
EXCHANGE = "images"  # a topic exchange: consumers pick the events they want by routing key


async def upload(path: str, user: str) -> str:
    image_id = uuid.uuid4().hex[:8]
    # ... here the web application would store the uploaded file, then:
    event = {"event": "new_image", "image_id": image_id, "user": user, "path": path,
             "at": datetime.now(UTC).isoformat()}
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()  # publisher confirms: publish() returns once the broker has it
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        message = aio_pika.Message(json.dumps(event).encode(), content_type="application/json",
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=image_id)
        await exchange.publish(message, routing_key="image.new")
    return image_id


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="publish a new_image event")
    parser.add_argument("path")
    parser.add_argument("--user", default="ann")
    args = parser.parse_args()
    print("published new_image", asyncio.run(upload(args.path, args.user)))
