"""The flow's consumers: the processor (the normal destination), the validator (the detour) and the inspector
(reads the wire tap's copies).

    python consumers.py processor validator inspector
"""

import asyncio
import json
import signal
import sys

import aio_pika

from topology import URL, declare


def problem(order: dict) -> str | None:
    if not order.get("item"):
        return "no item"
    if not isinstance(order.get("amount"), (int, float)) or order["amount"] <= 0:
        return "amount must be positive"
    return None


async def main(roles: list[str]) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    connection = await aio_pika.connect_robust(URL)
    async with connection:
        channel = await connection.channel()  # publisher confirms: the validator's forward is confirmed
        topology = await declare(channel)

        async def processor(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                order = json.loads(message.body)
                print(f"processor: order {order['id']} processed (amount {order['amount']})", flush=True)

        async def validator(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                order = json.loads(message.body)
                why = problem(order)
                if why is None:  # back on the main route (forwarded, confirmed, then acked)
                    await topology["orders.main"].publish(aio_pika.Message(message.body, headers=message.headers,
                        content_type=message.content_type, delivery_mode=message.delivery_mode), routing_key="")
                    print(f"validator: order {order['id']} ok", flush=True)
                else:
                    await channel.default_exchange.publish(aio_pika.Message(message.body, headers={"x-invalid": why},
                        content_type=message.content_type, delivery_mode=message.delivery_mode),
                        routing_key="orders.invalid")
                    print(f"validator: order {order['id']} rejected: {why}", flush=True)

        async def inspector(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                print(f"inspector: saw {message.body.decode()}", flush=True)

        handlers = {"processor": ("orders.process", processor), "validator": ("orders.validate", validator),
                    "inspector": ("orders.inspect", inspector)}
        for role in roles:
            queue_name, handler = handlers[role]
            await topology[queue_name].consume(handler)
            print(f"{role}: ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["processor", "validator", "inspector"]))
