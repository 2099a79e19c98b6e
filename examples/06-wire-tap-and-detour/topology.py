"""The exchanges, queues and fixed bindings of the order flow, declared (idempotently) by every program.

    producer ──► orders (fanout) ──────────────► orders.switch (fanout, alternate-exchange: orders.main)
                   ┆ tap on: exchange binding         ┆ detour on: queue orders.validate bound here
                   ▼                                  ▼ nothing bound: every message goes to orders.main
                 orders.tap (fanout)            orders.main (fanout) ──► queue orders.process ──► processor
                   ▼                                  ▲
                 queue orders.inspect           validator ──► (valid) orders.main, (invalid) queue orders.invalid

The two dotted bindings are the switches; the control bus (control_bus.py) adds and removes them.
"""

import os

import aio_pika

URL = os.environ.get("LEVERET_URL", "amqp://guest:guest@127.0.0.1:5672/")
FANOUT = aio_pika.ExchangeType.FANOUT


async def declare(channel: aio_pika.abc.AbstractChannel) -> dict:
    main = await channel.declare_exchange("orders.main", FANOUT, durable=True)
    switch = await channel.declare_exchange("orders.switch", FANOUT, durable=True,
                                            arguments={"alternate-exchange": "orders.main"})
    orders = await channel.declare_exchange("orders", FANOUT, durable=True)
    tap = await channel.declare_exchange("orders.tap", FANOUT, durable=True)
    await switch.bind(orders)  # exchange-to-exchange: everything published to "orders" reaches the switch
    queues = {}
    for name in ("orders.process", "orders.validate", "orders.inspect", "orders.invalid", "control.orders"):
        queues[name] = await channel.declare_queue(name, durable=True)
    await queues["orders.process"].bind(main)
    await queues["orders.inspect"].bind(tap)
    control = await channel.declare_exchange("control", aio_pika.ExchangeType.DIRECT, durable=True)
    await queues["control.orders"].bind(control, routing_key="orders")
    return {"orders": orders, "orders.switch": switch, "orders.main": main, "orders.tap": tap,
            "control": control, **queues}
