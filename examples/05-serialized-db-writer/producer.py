"""Queue writes for the database writer: `--count` writes whose order matters (a withdrawal only succeeds after
the deposit before it), and with `--overdraw` one more that must be rejected.

    python producer.py --count 1000 [--start 1] [--overdraw]
"""

import argparse
import asyncio
import json
import uuid

import aio_pika

from writer import QUEUE, QUEUE_ARGUMENTS, URL


def writes(start: int, count: int):
    for seq in range(start, start + count):
        account, block = f"acct-{seq % 10}", (seq - 1) // 10  # seq 1-10 are block 0, 11-20 block 1, ...
        if block == 0:
            yield {"seq": seq, "op": "open", "account": account}
        elif block % 2 == 1:
            yield {"seq": seq, "op": "deposit", "account": account, "amount": seq}
        else:  # take out what the deposit ten writes earlier put in: valid only if that one came first
            yield {"seq": seq, "op": "withdraw", "account": account, "amount": seq - 10}


async def main(start: int, count: int, overdraw: bool) -> None:
    run = uuid.uuid4().hex[:8]
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()  # with publisher confirms
        await channel.declare_queue("db-writes.rejected", durable=True)
        await channel.declare_queue(QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
        batch = list(writes(start, count))
        if overdraw:
            batch.append({"seq": start + count, "op": "withdraw", "account": "acct-1", "amount": 10**9})
        for write in batch:
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps(write).encode(), content_type="application/json",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=f"{run}-{write['seq']}"),
                routing_key=QUEUE)
    print(f"queued {len(batch)} writes (seq {start}-{start + len(batch) - 1})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="queue writes for writer.py")
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--overdraw", action="store_true", help="add one write that must be rejected")
    args = parser.parse_args()
    asyncio.run(main(args.start, args.count, args.overdraw))
