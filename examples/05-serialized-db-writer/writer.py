"""The database writer: applies the writes queued in `db-writes` to SQLite, in order, many per transaction.

    python writer.py [--db ledger.db] [--batch 100] [--name A]

The queue has a single active consumer: start a second writer and it stands by, taking over (where the first
left off) when the first stops or dies. Messages are acked only after the transaction that applied them is
committed, so a writer killed at any moment loses nothing; a write that was committed but not yet acked comes
again and is recognised by its message id, so nothing is applied twice either.
"""

import argparse
import asyncio
import json
import os
import signal
import sqlite3

import aio_pika

URL = os.environ.get("LEVERET_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = "db-writes"
QUEUE_ARGUMENTS = {
    "x-single-active-consumer": True,  # one writer at a time, in queue order; the others stand by
    "x-dead-letter-exchange": "",  # a write that cannot be applied (bad input) goes to db-writes.rejected
    "x-dead-letter-routing-key": "db-writes.rejected",
}
LINGER = 0.02  # seconds to wait for more writes before committing a batch that is not full

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS applied (message_id TEXT PRIMARY KEY, seq INTEGER);  -- what was applied, in order
CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, writer TEXT, size INTEGER);
"""


class BadWrite(Exception):
    """The write itself is wrong (no such account, overdraft): retrying it cannot help."""


def apply(db: sqlite3.Connection, write: dict) -> None:
    op, account = write["op"], write["account"]
    try:
        if op == "open":
            db.execute("INSERT INTO accounts VALUES (?, 0)", (account,))
        elif op in ("deposit", "withdraw"):
            amount = write["amount"] if op == "deposit" else -write["amount"]
            if db.execute("UPDATE accounts SET balance = balance + ? WHERE name = ?", (amount, account)).rowcount != 1:
                raise BadWrite(f"no account {account!r}")
        else:
            raise BadWrite(f"unknown operation {op!r}")
    except sqlite3.IntegrityError as exc:  # the CHECK (no overdraft) or a duplicate account
        raise BadWrite(str(exc)) from None


def apply_once(db: sqlite3.Connection, message: aio_pika.abc.AbstractIncomingMessage) -> None:
    write = json.loads(message.body)
    if db.execute("INSERT OR IGNORE INTO applied VALUES (?, ?)", (message.message_id, write["seq"])).rowcount:
        apply(db, write)  # not applied before (a redelivery after a crash between commit and ack is skipped)


async def write_batch(db: sqlite3.Connection, batch: list, name: str) -> None:
    try:
        with db:  # one transaction for the whole batch
            for message in batch:
                apply_once(db, message)
            db.execute("INSERT INTO batches (writer, size) VALUES (?, ?)", (name, len(batch)))
    except (BadWrite, ValueError, KeyError):
        await write_one_by_one(db, batch, name)  # find the bad one: the others are applied, in order
        return
    # Any other error (the database is down, the disk is full) stops the writer: its unacked writes go back
    # to the queue, for the standby writer or for this one when its supervisor restarts it.
    await batch[-1].ack(multiple=True)  # after the commit: one ack for the whole batch
    print(f"writer {name}: committed {len(batch)} writes (seq {seq(batch[0])}-{seq(batch[-1])})", flush=True)


async def write_one_by_one(db: sqlite3.Connection, batch: list, name: str) -> None:
    applied = []
    for message in batch:
        try:
            with db:
                apply_once(db, message)
        except (BadWrite, ValueError, KeyError) as exc:
            print(f"writer: rejected seq {seq(message)}: {exc}", flush=True)
            await message.reject(requeue=False)  # dead-lettered to db-writes.rejected
        else:
            await message.ack()
            applied.append(seq(message))
    if applied:
        print(f"writer {name}: committed {len(applied)} writes one at a time (seq {applied[0]}-{applied[-1]})",
              flush=True)


def seq(message: aio_pika.abc.AbstractIncomingMessage) -> object:
    try:
        return json.loads(message.body).get("seq")
    except ValueError:
        return "?"


async def main(path: str, batch_size: int, name: str) -> None:
    db = sqlite3.connect(path, timeout=30)
    db.executescript(SCHEMA)
    connection = await aio_pika.connect_robust(URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=batch_size)  # up to one batch delivered and not yet acked
        await channel.declare_queue("db-writes.rejected", durable=True)
        queue = await channel.declare_queue(QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
        inbox: asyncio.Queue = asyncio.Queue()
        tag = await queue.consume(inbox.put)

        async def stop() -> None:
            await queue.cancel(tag)  # no more deliveries; what was delivered is written first
            await inbox.put(None)

        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: asyncio.ensure_future(stop()))
        print(f"writer {name}: ready (active, or standing by while another writer is active)", flush=True)
        while (message := await inbox.get()) is not None:
            batch = [message]
            while len(batch) < batch_size:  # take what has come, up to a batch
                try:
                    message = await asyncio.wait_for(inbox.get(), LINGER)
                except TimeoutError:
                    break
                if message is None:
                    inbox.put_nowait(None)
                    break
                batch.append(message)
            await write_batch(db, batch, name)
    db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="apply the queued writes to SQLite, in order, in batches")
    parser.add_argument("--db", default=os.environ.get("LEDGER_DB", "ledger.db"))
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--name", default=str(os.getpid()))
    args = parser.parse_args()
    asyncio.run(main(args.db, args.batch, args.name))
