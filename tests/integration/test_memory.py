"""Bounded memory (docs/memory.md): a durable queue keeps only a window of its ready messages in memory and
reads the rest back from the store in order; consumers that stop reading their socket stop page-in; the
memory alarm counts what messages really cost; a message whose store write failed is never delivered; the
disk alarm leaves room for the WAL.

Real clients (pika, raw sockets) against a real Leveret; broker state is read on the server's own loop
(``ThreadedServer.call``) only to check what stays in memory.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from conftest import small_tmpfs
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from leveret.amqp import codec, spec
from leveret.config import Config
from leveret.core.queue import Queue
from leveret.core.storage import Purge, Push, Store
from leveret.node import ThreadedServer
from leveret.store.memory import MemoryStore
from leveret.store.sqlite import SqliteStore

import waiting
from rawamqp import RawClient
from serverproc import LeveretProcess

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)
WINDOW = 32


def connect(port: int) -> BlockingConnection:
    return BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1))


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    return waiting.wait_for(condition, timeout, f"timed out waiting for {what}", interval=0.02)


@pytest.fixture
def start(make_config: Callable[..., Config]) -> Iterator[Callable[..., ThreadedServer]]:
    """Start a Leveret (stopping the previous one): same data directory, so a second call is a restart."""
    servers: list[ThreadedServer] = []

    def run(**overrides: Any) -> ThreadedServer:
        if servers:
            servers.pop().stop()
        server = ThreadedServer(make_config(**{"queue_memory_window": WINDOW, **overrides})).start()
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop()


def queue_of(server: ThreadedServer, name: str) -> Queue:
    return server.broker.vhosts["/"].queues[name]


def held(server: ThreadedServer, name: str) -> tuple[int, int]:
    """(ready messages, of them with a record in memory), read on the server's loop."""
    def read() -> tuple[int, int]:
        queue = queue_of(server, name)
        return queue.message_count, queue.resident_count
    return server.call(read)  # type: ignore[return-value]


def drain(ch: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, method.redelivered))


def publish_confirmed(ch: BlockingChannel, queue: str, bodies: list[bytes], props: list[pika.BasicProperties]) -> None:
    for body, prop in zip(bodies, props, strict=True):
        ch.basic_publish("", queue, body, prop)


# --- a durable queue keeps a window ---------------------------------------------------------------------------


def mixed(n: int) -> tuple[list[bytes], list[pika.BasicProperties]]:
    """Persistent messages with a transient one every 10th and one with a (long) expiration every 25th."""
    bodies = [b"%d" % i for i in range(n)]
    props = [TRANSIENT if i % 10 == 3 else pika.BasicProperties(delivery_mode=2, expiration="600000")
             if i % 25 == 7 else PERSISTENT for i in range(n)]
    return bodies, props


def test_long_durable_queue_keeps_a_window_and_stays_in_order(start: Callable[..., ThreadedServer]) -> None:
    server = start()
    n = 1200
    bodies, props = mixed(n)
    pinned = sum(1 for p in props if p.delivery_mode == 1 or p.expiration)
    with connect(server.port) as conn:
        ch = conn.channel()
        ch.queue_declare("long", durable=True)
        ch.confirm_delivery()
        publish_confirmed(ch, "long", bodies, props)
        ready, resident = wait_for(lambda: (lambda h: h if h[1] <= 2 * WINDOW + pinned else None)(held(server, "long")),
                                   what="committed messages to leave memory")
        assert ready == n
        assert resident <= 2 * WINDOW + pinned  # records: the window, transient and expiring ones only
        # requeue keeps positions: take 5 unacked from the head, close the channel, they come back first
        taker = conn.channel()
        got = [taker.basic_get("long", auto_ack=False) for _ in range(5)]
        assert [g[2] for g in got] == bodies[:5]
        taker.close()
        out = drain(ch, "long")
    assert [b for b, _ in out] == bodies
    assert [r for _, r in out[:6]] == [True] * 5 + [False]
    assert held(server, "long") == (0, 0)


def test_recovery_reads_a_window_and_the_rest_in_order(start: Callable[..., ThreadedServer]) -> None:
    server = start()
    n = 800
    bodies = [b"m%d" % i for i in range(n)]
    with connect(server.port) as conn:
        ch = conn.channel()
        ch.queue_declare("rec", durable=True)
        ch.confirm_delivery()
        publish_confirmed(ch, "rec", bodies, [PERSISTENT] * n)
        got = ch.basic_get("rec", auto_ack=False)  # unacked over the restart: comes back redelivered
        assert got[2] == b"m0"
    server = start()
    ready, resident = held(server, "rec")
    assert ready == n and resident <= WINDOW
    with connect(server.port) as conn:
        out = drain(conn.channel(), "rec")
    assert [b for b, _ in out] == bodies
    assert [r for _, r in out[:2]] == [True, False]


def test_purge_of_a_paged_queue_reaches_the_disk(start: Callable[..., ThreadedServer]) -> None:
    server = start()
    with connect(server.port) as conn:
        ch = conn.channel()
        ch.queue_declare("pur", durable=True)
        ch.confirm_delivery()
        publish_confirmed(ch, "pur", [b"x%d" % i for i in range(400)], [PERSISTENT] * 400)
        kept = ch.basic_get("pur", auto_ack=False)  # unacked: survives the purge and the restart
        assert ch.queue_purge("pur").method.message_count == 399
        publish_confirmed(ch, "pur", [b"after"], [PERSISTENT])
        assert kept[0] is not None
    server = start()
    with connect(server.port) as conn:
        out = drain(conn.channel(), "pur")
    assert [b for b, _ in out] == [b"x0", b"after"]


def test_max_length_and_dead_letters_with_paging(start: Callable[..., ThreadedServer]) -> None:
    server = start()
    with connect(server.port) as conn:
        ch = conn.channel()
        ch.queue_declare("dlq", durable=True)
        ch.queue_declare("capped", durable=True, arguments={"x-max-length": 100, "x-dead-letter-exchange": "",
                                                             "x-dead-letter-routing-key": "dlq"})
        ch.confirm_delivery()
        publish_confirmed(ch, "capped", [b"%d" % i for i in range(300)], [PERSISTENT] * 300)
        assert ch.queue_declare("capped", passive=True).method.message_count == 100
        # a rejected message from deep in a paged queue is dead-lettered with its body
        method, _props, body = ch.basic_get("capped", auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
        assert body == b"200"
        kept = drain(ch, "capped")
        dead = drain(ch, "dlq")
    assert [b for b, _ in kept] == [b"%d" % i for i in range(201, 300)]
    assert [b for b, _ in dead] == [b"%d" % i for i in range(201)]


def test_priority_queue_keeps_priorities_past_the_window(start: Callable[..., ThreadedServer]) -> None:
    server = start()
    with connect(server.port) as conn:
        ch = conn.channel()
        ch.queue_declare("prio", durable=True, arguments={"x-max-priority": 5})
        ch.confirm_delivery()
        bodies = [b"%d" % i for i in range(200)]
        props = [pika.BasicProperties(delivery_mode=2, priority=i % 3) for i in range(200)]
        publish_confirmed(ch, "prio", bodies, props)
        out = [b for b, _ in drain(ch, "prio")]
    expected = [b for level in (2, 1, 0) for i, b in enumerate(bodies) if i % 3 == level]
    assert out == expected


# --- a consumer that stops reading stops page-in --------------------------------------------------------------


def publish_raw(port: int, queue: str, count: int, size: int) -> None:
    """``count`` persistent messages numbered in their first 8 bytes, with confirms (one window)."""
    client = RawClient(port, timeout=60)
    client.handshake()
    client.open_channel()
    client.send_method(1, "confirm.select", False)
    assert client.recv_method() is not None
    props = codec.encode_properties({"delivery_mode": 2})
    frames = []
    for i in range(count):
        frames.append(codec.method_frame(1, spec.method("basic.publish"), (0, "", queue, False, False)))
        frames.extend(codec.content_frames(1, props, i.to_bytes(8, "big") + b"x" * (size - 8), 131072))
    client.send(b"".join(frames))
    confirmed = 0
    while confirmed < count:
        reply = client.recv_method()
        assert reply is not None and reply[1] == "basic.ack", reply
        confirmed = reply[2][0]
    client.close()


def small_window_client(port: int) -> RawClient:
    """A raw client whose socket receive buffer is fixed at 64 KiB (set before connecting, so the kernel does
    not grow it): when it stops reading, the broker's socket fills after a few MB."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    client = RawClient.__new__(RawClient)
    client.sock, client.buf, client.frame_max = sock, b"", 131072
    return client


@pytest.mark.parametrize("no_ack", [True, False], ids=["no-ack", "manual-ack-no-qos"])
def test_consumer_that_does_not_read_stops_page_in(start: Callable[..., ThreadedServer], no_ack: bool) -> None:
    server = start()
    n, size = 1500, 16384
    with connect(server.port) as conn:
        conn.channel().queue_declare("big", durable=True)
    publish_raw(server.port, "big", n, size)
    consumer = small_window_client(server.port)
    consumer.handshake()
    consumer.open_channel()
    consumer.send_method(1, "basic.consume", 0, "big", "c", False, no_ack, False, False, {})

    def stalled() -> bool:  # the transport said its buffer is full: the consumer does not read
        return any(c._transport_paused for c in server.server.connections)

    wait_for(lambda: server.call(stalled), what="the consumer's socket to fill")
    delivered, resident, used = server.call(lambda: (queue_of(server, "big").stats_delivered,
                                                     queue_of(server, "big").resident_count,
                                                     server.broker.memory.used))
    assert delivered < n // 2, delivered  # socket buffers and one DELIVERY_BUFFER, not the whole backlog
    assert resident <= 2 * WINDOW
    assert used < 32 * 1024 * 1024, used
    # it reads again: everything arrives, in order
    expected = 0
    tag = 0
    while expected < n:
        frame = consumer.recv_frame()
        assert frame is not None
        ftype, _channel, payload = frame
        if ftype == spec.FRAME_METHOD:
            method, args = codec.decode_method_payload(payload)
            if method.full_name == "basic.deliver":
                tag = args[1]
        elif ftype == spec.FRAME_BODY and len(payload) >= 8 and payload[:8] != b"x" * 8:
            assert int.from_bytes(payload[:8], "big") == expected
            expected += 1
    if not no_ack:
        consumer.send_method(1, "basic.ack", tag, True)
    consumer.close()
    wait_for(lambda: server.call(lambda: queue_of(server, "big").message_count == 0 and
                                 queue_of(server, "big").unacked_count == 0), what="the queue to empty")


def test_unacked_deliveries_from_a_backlog_keep_records_not_bodies(start: Callable[..., ThreadedServer]) -> None:
    """A manual-ack consumer without qos that reads everything and never acks holds the records only (the
    bodies are in the store); requeued, every message comes back whole and in order."""
    server = start()
    n, size = 600, 8192
    bodies = [b"%04d" % i + b"b" * (size - 4) for i in range(n)]
    with connect(server.port) as conn:
        ch = conn.channel()
        ch.queue_declare("unacked", durable=True)
        ch.confirm_delivery()
        publish_confirmed(ch, "unacked", bodies, [PERSISTENT] * n)
        consumer = conn.channel()
        got = []
        for method, _props, body in consumer.consume("unacked", auto_ack=False, inactivity_timeout=30):
            assert method is not None
            got.append(body)
            if len(got) == n:
                break
        assert got == bodies
        used = server.call(lambda: server.broker.memory.used)
        assert used < n * size // 4, used  # records, not 4.9 MB of bodies
        consumer.close()  # everything is requeued
        out = drain(ch, "unacked")
    assert [b for b, _ in out] == bodies
    assert all(redelivered for _, redelivered in out)


# --- the memory alarm counts what messages cost -----------------------------------------------------------------

MARGIN = 12 * 1024 * 1024  # docs/memory.md: how far over the watermark the broker may go


def rss_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split("VmRSS:")[1].split()[0]) * 1024


def read_methods(client: RawClient, timeout: float) -> list[str]:
    """Method names the server sent within ``timeout`` (content frames skipped)."""
    names = []
    deadline = time.monotonic() + timeout
    client.sock.setblocking(False)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([client.sock], [], [], 0.05)
            if not ready:
                if names:
                    break
                continue
            chunk = client.sock.recv(65536)
            if not chunk:
                break
            client.buf += chunk
            while len(client.buf) >= 7:
                ftype, _channel, size = struct.unpack_from(">BHI", client.buf)
                if len(client.buf) < 8 + size:
                    break
                payload, client.buf = client.buf[7:7 + size], client.buf[8 + size:]
                if ftype == spec.FRAME_METHOD:
                    names.append(codec.decode_method_payload(payload)[0].full_name)
    finally:
        client.sock.setblocking(True)
    return names


def test_flood_of_empty_messages_is_blocked_at_the_watermark(tmp_path: Path) -> None:
    """Empty transient messages cost no body bytes but records: the alarm fires at the watermark (process RSS),
    the publisher gets connection.blocked, /metrics reports the real RSS, and draining does not go over."""
    limit = 100_000_000
    server = LeveretProcess(tmp_path / "data", env={"LEVERET_MEMORY_HIGH_WATERMARK": str(limit)}).start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        http_port = int(next(line for line in server.lines if "management API listening" in line)
                        .rstrip("/").rsplit(":", 1)[1])
        # the management API's code (~16 MiB) is loaded at its first request, and code is not bounded by the
        # alarm (docs/memory.md, "Margin"): loaded before the flood, as on a broker monitored from its start
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).close()
        publisher = RawClient(server.port, timeout=30)
        publisher.handshake()
        publisher.open_channel()
        publisher.send_method(1, "queue.declare", 0, "flood", False, False, False, False, False, {})
        assert publisher.recv_method() is not None
        one = codec.method_frame(1, spec.method("basic.publish"), (0, "", "flood", False, False)) + b"".join(
            codec.content_frames(1, codec.encode_properties({}), b"", 131072))
        chunk = one * 2000
        pending = b""
        blocked = False
        sent = 0
        deadline = time.monotonic() + 100
        publisher.sock.setblocking(False)
        while not blocked and sent < 5_000_000 and time.monotonic() < deadline:
            readable, writable, _ = select.select([publisher.sock], [publisher.sock], [], 0.5)
            if readable:
                publisher.sock.setblocking(True)
                blocked = "connection.blocked" in read_methods(publisher, 1.0)
                publisher.sock.setblocking(False)
            elif writable:
                if not pending:
                    pending = chunk
                    sent += 2000
                done = publisher.sock.send(pending)
                pending = pending[done:]
        publisher.sock.setblocking(True)
        assert blocked, f"no connection.blocked after {sent} messages, RSS {rss_of(pid)}"
        peak = rss_of(pid)
        assert peak < limit + MARGIN, peak
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        reported = float(next(line for line in text.splitlines()
                              if line.startswith("rabbitmq_process_resident_memory_bytes ")).split()[1])
        assert abs(reported - rss_of(pid)) < 0.1 * reported
        # drain: RSS stays under the watermark (plus the margin), and the publisher is unblocked
        consumer = RawClient(server.port, timeout=30)
        consumer.handshake()
        consumer.open_channel()
        consumer.send_method(1, "basic.consume", 0, "flood", "c", False, True, False, False, {})
        consumer.sock.setblocking(False)
        unblocked = False
        deadline = time.monotonic() + 100
        while not unblocked and time.monotonic() < deadline:
            select.select([consumer.sock], [], [], 0.1)
            with contextlib.suppress(BlockingIOError):
                while consumer.sock.recv(1 << 20):
                    pass
            peak = max(peak, rss_of(pid))
            unblocked = "connection.unblocked" in read_methods(publisher, 0.05)
        assert unblocked
        assert peak < limit + MARGIN, peak
    finally:
        server.kill()


# --- a failed store write is never delivered --------------------------------------------------------------------


def test_messages_nacked_for_a_failed_write_are_not_delivered(start: Callable[..., ThreadedServer]) -> None:
    """The store cannot write (disk full, simulated with PRAGMA max_page_count on the writer's connection):
    the publisher gets basic.nack, and those messages leave the queue: only confirmed ones are delivered,
    before and after a restart."""
    server = start()
    store = server.server.store
    assert isinstance(store, SqliteStore)

    def limit_pages(extra: int | None) -> None:
        pages = store._read("PRAGMA page_count")[0][0]
        count = 1073741823 if extra is None else pages + extra
        store.run_in_writer(lambda conn: conn.execute(f"PRAGMA max_page_count = {count}").fetchall())

    confirmed: list[bytes] = []
    nacked: list[bytes] = []
    with connect(server.port) as conn:
        ch = conn.channel()
        ch.queue_declare("full", durable=True)
        ch.confirm_delivery()
        for i in range(400):
            if i == 100:
                limit_pages(3)
            if i == 300:
                limit_pages(None)
            body = b"%05d" % i + b"z" * 4000
            try:
                ch.basic_publish("", "full", body, PERSISTENT)
                confirmed.append(body)
            except pika.exceptions.NackError:
                nacked.append(body)
        assert nacked, "the store never failed"
        assert ch.queue_declare("full", passive=True).method.message_count == len(confirmed)
        assert server.call(lambda: server.broker.memory.used) < len(confirmed) * 5000 + 100_000
    server = start()
    with connect(server.port) as conn:
        out = drain(conn.channel(), "full")
    assert [b for b, _ in out] == confirmed


# --- the disk alarm leaves room for the WAL ---------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs (root only; skipped where mounting is not allowed)."""
    with small_tmpfs(tmp_path, "64m", "") as mount_point:
        yield mount_point


def test_fast_publisher_does_not_fill_a_small_disk(small_disk: Path) -> None:
    """8 KB persistent messages as fast as a raw client can send them, on a 64 MB file system with
    disk_free_limit 8 MB: the disk alarm blocks the publisher before SQLite runs out of room (every publish is
    confirmed, none nacked) and the file system never fills up."""
    limit = 8_000_000
    server = LeveretProcess(small_disk / "data", env={"LEVERET_DISK_FREE_LIMIT": str(limit)}).start()
    try:
        client = RawClient(server.port, timeout=30)
        client.handshake()
        client.open_channel()
        client.send_method(1, "queue.declare", 0, "disk", False, True, False, False, False, {})
        assert client.recv_method() is not None
        client.send_method(1, "confirm.select", False)
        assert client.recv_method() is not None
        props = codec.encode_properties({"delivery_mode": 2})
        one = codec.method_frame(1, spec.method("basic.publish"), (0, "", "disk", False, False)) + b"".join(
            codec.content_frames(1, props, os.urandom(8192), 131072))
        chunk = one * 50
        pending = b""
        names: list[str] = []
        sent = 0
        lowest = shutil.disk_usage(small_disk).free
        deadline = time.monotonic() + 60
        client.sock.setblocking(False)
        while "connection.blocked" not in names and sent < 20_000 and time.monotonic() < deadline:
            readable, writable, _ = select.select([client.sock], [client.sock], [], 0.5)
            if readable:
                names += read_methods(client, 0.2)
                client.sock.setblocking(False)
            elif writable:
                if not pending:
                    pending = chunk
                    sent += 50
                pending = pending[client.sock.send(pending):]
            lowest = min(lowest, shutil.disk_usage(small_disk).free)
        names += read_methods(client, 1.0)
        lowest = min(lowest, shutil.disk_usage(small_disk).free)
        assert "connection.blocked" in names, (sent, lowest)
        assert "basic.nack" not in names
        assert lowest > limit // 2, lowest
        assert any("disk alarm set" in line for line in server.lines)
    finally:
        server.kill()


def test_a_delivered_message_whose_write_failed_is_not_requeued(start: Callable[..., ThreadedServer]) -> None:
    """Deliveries do not wait for the commit: a consumer may get a message whose write then fails (its publisher
    gets a nack). Given back (nack with requeue), it is dropped, not delivered again."""
    server = start()
    store = server.server.store
    assert isinstance(store, SqliteStore)
    with connect(server.port) as conn:
        ch = conn.channel()
        ch.queue_declare("failing", durable=True)
        consumer = conn.channel()
        consumer.basic_qos(prefetch_count=1000)
        got: list[Any] = []
        consumer.basic_consume("failing", lambda _ch, method, _props, body: got.append((method, body)))
        ch.confirm_delivery()
        pages = store._read("PRAGMA page_count")[0][0]
        store.run_in_writer(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}").fetchall())
        nacked = 0
        for i in range(30):
            try:
                ch.basic_publish("", "failing", b"%03d" % i + b"q" * 20000, PERSISTENT)
            except pika.exceptions.NackError:
                nacked += 1
        assert nacked, "the store never failed"
        wait_for(lambda: (conn.process_data_events(time_limit=0.05), len(got) == 30)[1], what="30 deliveries")
        store.run_in_writer(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchall())
        consumer.basic_nack(0, multiple=True, requeue=True)
        ready = ch.queue_declare("failing", passive=True).method.message_count
        assert ready == 30 - nacked  # the confirmed ones come back; the nacked ones are gone
        consumer.close()
        out = drain(ch, "failing")
    assert len(out) == 30 - nacked


# --- the store's ranged purge (both backends) -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_purge_after_seq_keeps_the_head(backend: str, tmp_path: Path) -> None:
    """Purge(after_seq) deletes a queue's messages with a greater seq only (a paged queue's ready messages on
    disk), also against pushes in the same submit; other queues are untouched."""
    store: Store = MemoryStore() if backend == "memory" else SqliteStore(tmp_path / "data" / "leveret.db")

    def push(i: int, queue: str = "q") -> Push:
        return Push(i, "/", queue, i, "", queue, b"header", b"body-%d" % i * 20)

    def run(ops: list[Any]) -> None:
        outcome: list[BaseException | None] = []
        store.submit(ops, outcome.append)
        store.flush()
        assert outcome == [None]

    with contextlib.closing(store):
        store.open()
        run([push(i) for i in range(1, 8)] + [push(100, "other")])
        run([push(8), push(9), Purge("/", "q", 4), push(10)])
        assert [m.id for m in store.load_messages("/", "q", with_bodies=False)] == [1, 2, 3, 4, 10]
        assert [m.id for m in store.load_messages("/", "other")] == [100]
        assert [m.seq for m in store.load_messages("/", "q", after_seq=2, limit=2)] == [3, 4]
