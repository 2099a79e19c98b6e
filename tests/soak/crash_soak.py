"""Crash soak: kill -9 Leveret at random moments under load and check that no confirmed message is lost.

A publisher (aio-pika, publisher confirms, up to ``window`` publishes in flight) sends numbered persistent
messages (body = the number) to a durable queue as fast as it can; a consumer (manual ack, prefetch 50)
records every delivery (number, redelivered flag, cycle) and acks most of them, holding every 7th unacked
(up to 10 per cycle). The broker (a ``python -m leveret serve`` child) is killed with SIGKILL after a random
0.2-1.0 s of traffic and started again on the same port and data dir; clients reconnect. At the end the
queue is drained.

Acks are not confirmed in AMQP, so an ack sent just before a kill may be lost and its message delivered
again. To keep the duplicate check strict the consumer, after every few acks, publishes an unroutable
message on the same confirm-mode channel and waits for its confirm: Leveret sends a confirm only once every
store write submitted before it is durable (leveret/core/durability.py), so the acks before it are then on
disk ("durable" acks). Such a message must never come back.

Checked (``CrashRun.violations``):

- the broker starts every time (the store always reopens);
- at every restart the recovered message count is at least the confirmed-and-never-acked messages and at
  most the published messages without a durable ack;
- every confirmed message is consumed at least once; no number that was never published is consumed;
- a message is delivered again only in a later cycle than its previous delivery, and only when that delivery
  was not acked or its ack was not yet known to be durable; it comes back with redelivered=True when a
  barrier followed its previous delivery (the delivery mark is then on disk; a message delivered within a
  few ms of the kill may come back with redelivered=False, which is allowed);
- the broker never nacks a publish; after the drain and a graceful restart the queue is empty.

Run it standalone (see tests/soak/README.md)::

    python tests/soak/crash_soak.py --cycles 200 --seconds 600

tests/integration/test_durability.py runs the same engine for ~20 cycles in the default suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

TESTS_DIR = Path(__file__).resolve().parent.parent / "support"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from serverproc import LeveretProcess  # noqa: E402

QUEUE = "crash-soak"
BARRIER_KEY = "crash-soak.no-such-queue"  # unroutable: its confirm is a durability barrier
HOLD_EVERY = 7  # the consumer does not ack numbers divisible by this (up to HOLD_MAX per cycle) ...
HOLD_MAX = 10  # ... so they are delivered-unacked at the kill (more would fill the prefetch window)
BARRIER_EVERY = 25  # acks between durability barriers
PREFETCH = 50
RECOVERED = re.compile(r"recovered (\d+) queues and (\d+) messages")


@dataclass
class Delivery:
    number: int
    redelivered: bool
    cycle: int
    at: float  # time.monotonic() when the client got it
    ack: str = ""  # "" not acked, "sent" ack written (maybe lost in a kill), "durable" ack behind a barrier
    marked: bool = False  # a barrier followed it: its delivery mark (redelivered after a restart) is on disk


@dataclass
class CycleInfo:
    cycle: int
    start_seconds: float
    recovered_queues: int
    recovered_messages: int
    lower_bound: int
    upper_bound: int
    delay: float = 0.0
    killed_at: float = 0.0
    published: int = 0
    confirmed: int = 0
    delivered: int = 0


@dataclass
class CrashRun:
    data_dir: Path
    cycles: int = 200
    seconds: float = 600.0
    seed: int | None = None
    min_delay: float = 0.2
    max_delay: float = 1.0
    window: int = 200
    max_backlog: int = 20_000
    verbose: bool = False

    published: dict[int, int] = field(default_factory=dict)  # number -> cycle it was sent in
    confirmed: set[int] = field(default_factory=set)
    nacked: set[int] = field(default_factory=set)
    deliveries: list[Delivery] = field(default_factory=list)
    cycle_info: list[CycleInfo] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    final_count: int | None = None
    elapsed: float = 0.0

    # shared between the driver thread and the clients' event loop thread (plain attributes; the GIL suffices)
    _cycle: int = 0
    _port: int = 0
    _draining: bool = False
    _stopping: bool = False
    _drained: bool = False
    _up: dict[str, int] = field(default_factory=dict)  # client -> cycle it is connected in
    _down: dict[str, int] = field(default_factory=dict)  # client -> last cycle whose connection ended
    _next_number: int = 1
    _acks_sent: int = 0

    # --- driver (main thread) ---------------------------------------------------------------------------

    def run(self) -> CrashRun:
        logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
        rng = random.Random(self.seed)
        started = time.monotonic()
        server = LeveretProcess(self.data_dir)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_until_complete, args=(self._clients(),), daemon=True,
                                  name="crash-soak-clients")
        thread.start()
        try:
            self._drive(server, rng, started)
        finally:
            self._stopping = True
            server.kill()
            thread.join(15)
            if thread.is_alive():
                self.violations.append("the client thread did not stop")
            else:
                loop.close()
        self.elapsed = time.monotonic() - started
        self._check()
        return self

    def _drive(self, server: LeveretProcess, rng: random.Random, started: float) -> None:
        deadline = started + self.seconds
        for cycle in range(1, self.cycles + 1):
            if not self._start(server, cycle):
                return
            info = self.cycle_info[-1]
            before = (len(self.published), len(self.confirmed), len(self.deliveries))
            self._port = server.port
            self._cycle = cycle
            if not self._wait(lambda c=cycle: self._up.get("pub") == c and self._up.get("con") == c, 10):
                self.violations.append(f"cycle {cycle}: clients did not connect within 10 s: {self._up}")
                return
            info.delay = rng.uniform(self.min_delay, self.max_delay)
            time.sleep(info.delay)
            server.kill()
            info.killed_at = time.monotonic()
            if not self._wait(lambda c=cycle: self._down.get("pub") == c and self._down.get("con") == c, 15):
                self.violations.append(f"cycle {cycle}: clients did not notice the kill within 15 s")
                return
            info.published = len(self.published) - before[0]
            info.confirmed = len(self.confirmed) - before[1]
            info.delivered = len(self.deliveries) - before[2]
            if self.verbose:
                print(f"cycle {cycle}: {info}", flush=True)
            if time.monotonic() > deadline:
                break
        # final round: no kill, drain the queue, then a graceful restart must show it empty
        final = len(self.cycle_info) + 1
        self._draining = True
        if not self._start(server, final):
            return
        self._port = server.port
        self._cycle = final
        if not self._wait(lambda: self._drained, 60):
            self.violations.append("the queue was not drained within 60 s")
            return
        self._stopping = True
        if not self._wait(lambda: self._down.get("con") == final and self._down.get("pub") == final, 15):
            self.violations.append("the clients did not close after the drain")
        code = server.stop()
        if code != 0:
            self.violations.append(f"graceful stop exited with {code}")
        if not self._start(server, final + 1):
            return
        self.final_count = self.cycle_info[-1].recovered_messages
        server.stop()

    def _start(self, server: LeveretProcess, cycle: int) -> bool:
        """Start the broker and record what it recovered, with the bounds the recovered count must respect."""
        lower, upper = self._bounds()
        try:
            server.start(timeout=30)
        except RuntimeError as exc:
            self.violations.append(f"cycle {cycle}: the broker did not start (store did not reopen): {exc}")
            return False
        queues = messages = 0
        for line in server.lines:
            match = RECOVERED.search(line)
            if match:
                queues, messages = int(match.group(1)), int(match.group(2))
        info = CycleInfo(cycle, round(time.monotonic(), 3), queues, messages, lower, upper)
        self.cycle_info.append(info)
        if not lower <= messages <= upper:
            self.violations.append(f"cycle {cycle}: recovered {messages} messages, expected between {lower} "
                                   f"(confirmed, never acked) and {upper} (published, no durable ack)")
        if cycle > 1 and queues != 1:
            self.violations.append(f"cycle {cycle}: recovered {queues} queues, expected 1")
        return True

    def _bounds(self) -> tuple[int, int]:
        """(confirmed and never acked, published and not durably acked): what the store must / may hold.
        Called while both clients are disconnected."""
        ack_sent = {d.number for d in self.deliveries if d.ack}
        ack_durable = {d.number for d in self.deliveries if d.ack == "durable"}
        lower = len(self.confirmed - ack_sent)
        upper = len(self.published.keys() - ack_durable)
        return lower, upper

    @staticmethod
    def _wait(predicate: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return True
            time.sleep(0.005)
        return False

    # --- clients (their own event loop thread) ----------------------------------------------------------

    async def _clients(self) -> None:
        await asyncio.gather(self._client("pub", self._publish), self._client("con", self._consume))

    async def _client(self, name: str, body: object) -> None:
        """Connect in each cycle, run ``body`` until the connection dies, then wait for the next cycle."""
        seen = 0
        while not self._stopping:
            cycle = self._cycle
            if cycle == seen or cycle == 0:
                await asyncio.sleep(0.005)
                continue
            seen = cycle
            conn: aio_pika.abc.AbstractConnection | None = None
            try:
                for _ in range(200):  # the broker is up when the cycle is published; retry briefly anyway
                    try:
                        conn = await aio_pika.connect(host="127.0.0.1", port=self._port, timeout=5)
                        break
                    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError):
                        if self._cycle != cycle or self._stopping:
                            break
                        await asyncio.sleep(0.02)
                if conn is None:
                    self.client_errors.append(f"{name} cycle {cycle}: could not connect")
                    continue
                await body(conn, cycle)  # type: ignore[operator]
            except Exception as exc:  # the kill: connection reset, channel closed, ...
                if self.verbose:
                    print(f"{name} cycle {cycle}: {type(exc).__name__}: {exc}", flush=True)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
                self._down[name] = cycle

    async def _publish(self, conn: aio_pika.abc.AbstractConnection, cycle: int) -> None:
        channel = await conn.channel(publisher_confirms=True)
        await channel.declare_queue(QUEUE, durable=True)
        exchange = channel.default_exchange
        self._up["pub"] = cycle
        if self._draining:
            while not self._stopping:
                await asyncio.sleep(0.01)
            return
        window = asyncio.Semaphore(self.window)
        failed = asyncio.Event()
        pending: set[asyncio.Task[None]] = set()

        async def one(number: int) -> None:
            message = aio_pika.Message(str(number).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            try:
                await asyncio.wait_for(exchange.publish(message, QUEUE, mandatory=False), 15)
            except aio_pika.exceptions.DeliveryError:
                self.nacked.add(number)
            except Exception:
                failed.set()
            else:
                self.confirmed.add(number)
            finally:
                window.release()

        while not failed.is_set() and self._cycle == cycle and not self._stopping and not conn.is_closed:
            await window.acquire()
            if failed.is_set():
                window.release()
                break
            if len(self.published) - self._acks_sent > self.max_backlog:
                window.release()
                await asyncio.sleep(0.01)
                continue
            number = self._next_number
            self._next_number = number + 1
            self.published[number] = cycle
            task = asyncio.create_task(one(number))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=20)
        raise ConnectionError("publisher connection lost")

    async def _consume(self, conn: aio_pika.abc.AbstractConnection, cycle: int) -> None:
        channel = await conn.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(QUEUE, durable=True)
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(inbox.put, no_ack=False)
        self._up["con"] = cycle
        unsure: list[Delivery] = []  # acked since the last barrier
        unmarked: list[Delivery] = []  # delivered since the last barrier
        held = 0
        idle = 0.0

        async def barrier() -> None:
            await channel.default_exchange.publish(aio_pika.Message(b""), BARRIER_KEY, mandatory=False,
                                                   timeout=15)
            for delivery in unsure:
                delivery.ack = "durable"
            for delivery in unmarked:
                delivery.marked = True
            unsure.clear()
            unmarked.clear()

        try:
            while not self._stopping and not conn.is_closed:
                try:
                    message = await asyncio.wait_for(inbox.get(), 0.05)
                except TimeoutError:
                    if unsure:
                        await barrier()
                    if self._draining:
                        idle += 0.05
                        if idle >= 0.3:
                            declared = await channel.declare_queue(QUEUE, passive=True)
                            count = declared.declaration_result.message_count
                            if count == 0 and inbox.empty():
                                self._drained = True
                            idle = 0.0
                    continue
                idle = 0.0
                delivery = self._record(message, cycle)
                unmarked.append(delivery)
                if delivery.number % HOLD_EVERY == 0 and held < HOLD_MAX and not self._draining:
                    held += 1
                    continue
                delivery.ack = "sent"  # from here on the broker may have it
                self._acks_sent += 1
                await message.ack()
                unsure.append(delivery)
                if len(unsure) >= BARRIER_EVERY:
                    await barrier()
        finally:
            while not inbox.empty():  # received before the connection died: delivered, never acked
                self._record(inbox.get_nowait(), cycle)

    def _record(self, message: aio_pika.abc.AbstractIncomingMessage, cycle: int) -> Delivery:
        try:
            number = int(message.body)
        except ValueError:
            number = -1
        delivery = Delivery(number, bool(message.redelivered), cycle, time.monotonic())
        self.deliveries.append(delivery)
        return delivery

    # --- verdict ----------------------------------------------------------------------------------------

    def _check(self) -> None:
        v = self.violations
        consumed = {d.number for d in self.deliveries}
        never_published = sorted(consumed - self.published.keys())
        if never_published:
            v.append(f"consumed numbers that were never published: {never_published[:20]}")
        lost = sorted(self.confirmed - consumed)
        if lost:
            v.append(f"{len(lost)} confirmed messages were never consumed: {lost[:20]}")
        if self.nacked:
            v.append(f"the broker nacked {len(self.nacked)} publishes: {sorted(self.nacked)[:20]}")
        previous: dict[int, Delivery] = {}
        bad: list[str] = []
        for delivery in self.deliveries:
            before = previous.get(delivery.number)
            if before is not None:
                if before.ack == "durable":
                    bad.append(f"{delivery.number} came back in cycle {delivery.cycle} after a durable ack in "
                               f"cycle {before.cycle}")
                elif delivery.cycle <= before.cycle:
                    bad.append(f"{delivery.number} delivered twice in cycle {delivery.cycle} without a requeue")
                elif before.marked and not delivery.redelivered:
                    bad.append(f"{delivery.number} came back in cycle {delivery.cycle} with redelivered=False after "
                               f"a durable delivery in cycle {before.cycle}")
            previous[delivery.number] = delivery
        if bad:
            v.append(f"{len(bad)} unexplained duplicates: {bad[:10]}")
        if self.final_count is None and not v:
            v.append("the run stopped before the final drain")
        if self.final_count is not None and self.final_count != 0:
            v.append(f"after the drain and a graceful restart the broker recovered {self.final_count} messages, "
                     "expected 0")

    def summary(self) -> dict[str, object]:
        counts = Counter(d.number for d in self.deliveries)
        again = [d for d in self.deliveries if counts[d.number] > 1]
        firsts: set[int] = set()
        redelivered_false_again = 0
        for d in self.deliveries:
            if d.number in firsts and not d.redelivered:
                redelivered_false_again += 1
            firsts.add(d.number)
        kill_cycles = [c for c in self.cycle_info if c.delay]
        return {
            "cycles": len(kill_cycles),
            "published": len(self.published),
            "confirmed": len(self.confirmed),
            "nacked": len(self.nacked),
            "deliveries": len(self.deliveries),
            "consumed": len(counts),
            "duplicates": sum(n - 1 for n in counts.values()),
            "duplicate_numbers": len({d.number for d in again}),
            "redelivered_flag_set": sum(d.redelivered for d in self.deliveries),
            "again_without_redelivered_flag": redelivered_false_again,
            "durable_acks": sum(d.ack == "durable" for d in self.deliveries),
            "max_recovered": max((c.recovered_messages for c in self.cycle_info), default=0),
            "seconds": round(self.elapsed, 1),
            "violations": len(self.violations),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="kill -9 / restart cycles (default 200)")
    parser.add_argument("--seconds", type=float, default=1800.0,
                        help="stop starting new cycles after this many seconds (default 1800)")
    parser.add_argument("--min-delay", type=float, default=0.2, help="shortest run before a kill (s)")
    parser.add_argument("--max-delay", type=float, default=1.0, help="longest run before a kill (s)")
    parser.add_argument("--window", type=int, default=200, help="publishes in flight (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default: a new temporary one, kept when the run fails)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every cycle")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="leveret-crash-soak-")) / "data"
    print(f"crash soak: seed {seed}, data dir {data_dir}", flush=True)
    run = CrashRun(data_dir, cycles=args.cycles, seconds=args.seconds, seed=seed, min_delay=args.min_delay,
                   max_delay=args.max_delay, window=args.window, verbose=args.verbose).run()
    print(" ".join(f"{k}={v}" for k, v in run.summary().items()))
    for error in run.client_errors[:20]:
        print("client:", error)
    for violation in run.violations:
        print("VIOLATION:", violation)
    return 1 if run.violations else 0


if __name__ == "__main__":
    sys.exit(main())
