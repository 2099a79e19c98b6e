"""Send orders into the flow (every fourth one has no valid amount, for the validator to catch).

    python producer.py --start 1 --count 8
"""

import argparse
import asyncio
import json

import aio_pika

from topology import URL, declare


async def main(start: int, count: int) -> None:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        orders = (await declare(channel))["orders"]
        for order_id in range(start, start + count):
            order = {"id": order_id, "item": "book", "amount": 0 if order_id % 4 == 0 else 10 + order_id}
            await orders.publish(aio_pika.Message(json.dumps(order).encode(), content_type="application/json",
                                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key="")
            print(f"sent order {order_id}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="send orders to the 'orders' exchange")
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.start, args.count))
