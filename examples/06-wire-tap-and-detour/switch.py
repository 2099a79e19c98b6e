"""Send a control message and print the control bus's answer (it waits for it: the switch is done then).

    python switch.py detour on      python switch.py tap off      python switch.py status
"""

import asyncio
import json
import sys
import uuid

import aio_pika

from topology import URL

REPLY_TO = "amq.rabbitmq.reply-to"  # direct reply-to: no reply queue to declare


async def main(args: list[str]) -> None:
    command = {"status": True} if args == ["status"] else {"switch": args[0], "on": args[1] == "on"}
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        replies = await channel.get_queue(REPLY_TO, ensure=False)

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            answer.set_result(json.loads(message.body))

        await replies.consume(on_reply, no_ack=True)
        control = await channel.get_exchange("control", ensure=False)
        await control.publish(aio_pika.Message(json.dumps(command).encode(), reply_to=REPLY_TO,
                                               correlation_id=uuid.uuid4().hex), routing_key="orders")
        print(json.dumps(await asyncio.wait_for(answer, 10)))


if __name__ == "__main__":
    if sys.argv[1:] != ["status"] and (len(sys.argv) != 3 or sys.argv[2] not in ("on", "off")):
        sys.exit("usage: switch.py tap|detour on|off, or switch.py status")
    asyncio.run(main(sys.argv[1:]))
