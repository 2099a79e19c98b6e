"""The control bus consumer: turns the wire tap and the detour on and off when told to, by changing bindings.

    python control_bus.py

It consumes the queue control.orders (bound to the exchange "control" with key "orders"). Messages (JSON):
{"switch": "tap" | "detour", "on": true | false}, or {"status": true}. It answers each one that has a reply_to
with the state of both switches and the number of messages in each queue of the flow. At start it sets both
switches off, so the flow is in a known state.
"""

import asyncio
import json
import signal

import aio_pika

from topology import URL, declare


async def main() -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    # A plain (not robust) connection: a robust one would replay the binding changes after a reconnect.
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        topology = await declare(channel)
        orders, switch, tap = topology["orders"], topology["orders.switch"], topology["orders.tap"]
        validate = topology["orders.validate"]
        state = {"tap": False, "detour": False}

        async def set_switch(name: str, on: bool) -> None:
            if name == "tap":  # copy every message of "orders" to the tap exchange, or stop copying
                await (tap.bind(orders) if on else tap.unbind(orders))
            elif name == "detour":
                # One binding flips the route: bound, the switch routes to the validator; unbound, it has no
                # route, so every message goes to its alternate exchange, orders.main. Never both, never none.
                await (validate.bind(switch) if on else validate.unbind(switch))
            else:
                raise ValueError(f"unknown switch {name!r}")
            state[name] = on
            print(f"control: {name} {'on' if on else 'off'}", flush=True)

        async def report() -> dict:
            counts = {}
            for name in ("orders.process", "orders.validate", "orders.inspect", "orders.invalid"):
                declared = await channel.declare_queue(name, passive=True)
                counts[name] = declared.declaration_result.message_count
            return {**state, "queues": counts}

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                try:
                    command = json.loads(message.body)
                    if "switch" in command:
                        await set_switch(command["switch"], bool(command["on"]))
                    answer = await report()
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"error": str(exc)}
                if message.reply_to:
                    await channel.default_exchange.publish(
                        aio_pika.Message(json.dumps(answer).encode(), correlation_id=message.correlation_id),
                        routing_key=message.reply_to)

        await set_switch("tap", False)
        await set_switch("detour", False)
        await topology["control.orders"].consume(on_message)
        print("control: ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
