"""The STOMP differential harness: a scenario, written once as a function of a :class:`StompRun`, drives raw STOMP
connections (tests/support/stompwire.py) and, where it says so, pika on the same broker's AMQP port, and records
what a client observed: every frame's command, its header lines as they came on the wire (still escaped,
compared as a sorted list: header order is not meaningful in STOMP, repeated headers are kept), its body byte
for byte; a receive that timed out ("nothing") or found the connection closed ("closed"); AMQP messages with
every property (harness.message_props).

Normalised, and nothing else: the ``server`` header (``RabbitMQ/3.10.8`` / ``Leveret/<ver>``), ``session``
ids, ``message-id`` and ``ack`` values (each distinct value becomes ``<id-N>`` in order of first appearance, so
"the same id as before" still compares), server-generated ``amq.gen-``/``amq.ctag-`` names, and the run's
unique name prefix (each run uses its own, so that two runs never share a queue).

``run_check(name, fn, stomp_broker)`` is the one test body: on the RabbitMQ parameter of ``stomp_broker`` the
scenario runs twice on RabbitMQ and the two transcripts must be equal (the scenario is deterministic, which is
what makes the comparison meaningful); on the Leveret parameter the transcript must equal RabbitMQ's, entry by
entry. Both skip, never fake, when RabbitMQ's STOMP plugin is not on 127.0.0.1:61613.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pika
import pika.exceptions
import pytest
from conftest import RABBITMQ_PORT, RABBITMQ_STOMP_PORT, rabbitmq_stomp_available, require_rabbitmq
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from stompwire import Closed, Frame, StompWire

from harness import delete_names, message_props, normalise
from waiting import poll

Entry = tuple[Any, ...]
Scenario = Callable[["StompRun"], None]

WAIT = 3.0  # seconds a frame that must come may take (a bound on a failure, not a speed claim)
QUIET = 0.3  # seconds during which a frame that must NOT come is watched for

_SERVER = re.compile(r"^(RabbitMQ|Leveret)/[0-9][\w.+-]*$")
_ID_HEADERS = ("message-id", "ack")


class StompRun:
    """One run of a scenario against one broker: its STOMP and AMQP connections, its names, its transcript."""

    def __init__(self, amqp_port: int, stomp_port: int, prefix: str) -> None:
        self.amqp_port = amqp_port
        self.stomp_port = stomp_port
        self.prefix = prefix
        self.log: list[Entry] = []
        self.clients: list[StompWire] = []
        self.connections: list[BlockingConnection] = []
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()
        self.ids: dict[str, str] = {}
        self.sessions: dict[str, str] = {}

    # --- names ---------------------------------------------------------------------------------------------

    def name(self, suffix: str) -> str:
        """A name unique to this run (a queue, an exchange, a routing key, a subscription id)."""
        return f"{self.prefix}-{suffix}"

    def queue(self, suffix: str = "q") -> str:
        """A queue name; the queue is deleted at the end of the run (/queue/NAME and /amq/queue/NAME)."""
        name = self.name(suffix)
        self.queues.add(name)
        return name

    def exchange(self, kind: str = "topic", suffix: str = "x") -> str:
        """A fresh exchange of ``kind`` declared through AMQP (deleted at the end)."""
        name = self.name(suffix)
        self.exchanges.add(name)
        self.amqp().exchange_declare(name, kind, auto_delete=False)
        return name

    # --- STOMP ---------------------------------------------------------------------------------------------

    def stomp(self) -> StompWire:
        client = StompWire(self.stomp_port)
        self.clients.append(client)
        return client

    def connect(self, label: str, headers: dict[str, str] | None = None, *, command: str = "CONNECT",
                ) -> StompWire:
        """A new connection, CONNECT (default 1.2, guest, vhost "/"), the reply recorded."""
        client = self.stomp()
        try:
            reply = client.connect(headers, command=command, timeout=WAIT)
        except Closed:
            self.record(label, "closed")
            return client
        self.record(label, *self.frame(reply))
        return client

    def send(self, client: StompWire, command: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
             body: bytes = b"") -> None:
        with contextlib.suppress(Closed):  # what the broker did about it is what the next recv records
            client.send(command, headers, body)

    def send_raw(self, client: StompWire, data: bytes) -> None:
        with contextlib.suppress(Closed):
            client.send_raw(data)

    def recv(self, label: str, client: StompWire, timeout: float = WAIT) -> Frame | None:
        """Record the next frame, or ("nothing") after ``timeout``, or ("closed")."""
        try:
            frame = client.recv(timeout)
        except Closed:
            self.record(label, "closed")
            return None
        self.record(label, *self.frame(frame))
        return frame

    def recv_n(self, label: str, client: StompWire, count: int, *, sort: bool = False) -> list[Frame]:
        """Record ``count`` frames (each waited for up to WAIT); ``sort``: in a canonical order rather than the
        order of arrival (where two brokers may legitimately interleave, e.g. a RECEIPT and a MESSAGE)."""
        frames: list[Frame] = []
        entries: list[Entry] = []
        for _ in range(count):
            try:
                frame = client.recv(WAIT)
            except Closed:
                entries.append(("closed",))
                break
            entries.append(self.frame(frame))
            if frame is None:
                break
            frames.append(frame)
        if sort:
            entries.sort(key=repr)
        for index, entry in enumerate(entries):
            self.record(f"{label}-{index}", *entry)
        return frames

    def quiet(self, label: str, client: StompWire, window: float = QUIET) -> None:
        """Record what arrives within ``window`` seconds (the scenario expects nothing: a frame that must not
        come, e.g. a message beyond the prefetch or after an abort)."""
        while True:
            try:
                frame = client.recv(window)
            except Closed:
                self.record(label, "closed")
                return
            if frame is None:
                self.record(label, "nothing")
                return
            self.record(label, *self.frame(frame))

    def bye(self, label: str, client: StompWire) -> None:
        """DISCONNECT with a receipt; record the answer (RECEIPT when the connection was usable, else the
        ERROR or the close) — how a scenario asks "is this connection still alive after that?"."""
        self.send(client, "DISCONNECT", {"receipt": "bye"})
        self.recv(label, client)

    def frame(self, frame: Frame | None) -> Entry:
        if frame is None:
            return ("nothing",)
        headers = sorted((key, self.header(key, value)) for key, value in frame.headers)
        return (frame.command, tuple(headers), self.text(frame.body))

    def header(self, key: str, value: str) -> str:
        if key == "server" and _SERVER.match(value):
            return "<server>"
        if key == "session":
            return self.sessions.setdefault(value, f"<session-{len(self.sessions) + 1}>")
        if key in _ID_HEADERS:
            return self.ids.setdefault(value, f"<id-{len(self.ids) + 1}>")
        return self.text(value)

    def text(self, value: Any) -> Any:
        if isinstance(value, bytes):
            return self.text(value.decode("latin-1")).encode("latin-1")
        if isinstance(value, str):
            value = normalise(value.replace(self.prefix, "<p>"))
        return value

    # --- AMQP on the same broker ---------------------------------------------------------------------------

    def amqp(self) -> BlockingChannel:
        conn = BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.amqp_port, heartbeat=0,
                                                            connection_attempts=1, blocked_connection_timeout=5))
        self.connections.append(conn)
        return conn.channel()

    def amqp_get(self, label: str, queue: str, timeout: float = WAIT) -> None:
        """basic.get (auto-ack) on ``queue``, polled until a message is there or ``timeout``; record its
        body, delivery fields and every property (or "get-empty"; or the channel close it caused)."""
        ch = self.amqp()

        def get() -> Any:
            try:
                return ch.basic_get(queue, auto_ack=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                return exc

        result = poll(get, lambda r: not isinstance(r, tuple) or r[0] is not None, timeout, 0.02)
        if isinstance(result, pika.exceptions.ChannelClosedByBroker):
            self.record(label, "channel.close", result.reply_code, self.text(result.reply_text))
            return
        method, properties, body = result
        if method is None:
            self.record(label, "get-empty")
            return
        props = tuple((key, self.text(value) if isinstance(value, str) else value)
                      for key, value in message_props(properties))
        self.record(label, self.text(body), method.redelivered, self.text(method.exchange),
                    self.text(method.routing_key), props)

    def amqp_count(self, label: str, queue: str, messages: int | None = None, timeout: float = WAIT) -> None:
        """A passive declare of ``queue`` (polled until it holds ``messages`` when given); record
        ("count", messages, consumers) or the channel close."""
        ch_holder: list[BlockingChannel] = []

        def count() -> tuple[Any, ...]:
            if not ch_holder or not ch_holder[0].is_open:
                ch_holder[:] = [self.amqp()]
            try:
                ok = ch_holder[0].queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                return ("channel.close", exc.reply_code, self.text(exc.reply_text))
            return ("count", ok.method.message_count, ok.method.consumer_count)

        seen = poll(count, lambda s: messages is None or s[:2] == ("count", messages), timeout, 0.02)
        self.record(label, *seen)

    # --- the transcript ------------------------------------------------------------------------------------

    def record(self, *entry: Any) -> None:
        self.log.append(entry)

    def cleanup(self) -> None:
        for client in self.clients:
            with contextlib.suppress(OSError):
                client.close()
        for conn in self.connections:
            if conn.is_open:
                with contextlib.suppress(Exception):
                    conn.close()
        delete_names(self.amqp_port, self.queues, self.exchanges)


def transcript(fn: Scenario, amqp_port: int, stomp_port: int) -> list[Entry]:
    run = StompRun(amqp_port, stomp_port, f"st-{uuid.uuid4().hex[:10]}")
    try:
        fn(run)
    finally:
        run.cleanup()
    return run.log


# --- the registry and the one test body ----------------------------------------------------------------------

SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    """Register a scenario under its module's area and function name ("connect/bad_login")."""
    area = fn.__module__.removeprefix("test_stomp_")
    key = f"{area}/{fn.__name__}"
    assert key not in SCENARIOS, f"two scenarios named {key}"
    SCENARIOS[key] = fn
    return fn


def names(module: str) -> list[str]:
    area = module.removeprefix("test_stomp_")
    return sorted(key for key in SCENARIOS if key.startswith(f"{area}/"))


_REFERENCE: dict[str, list[Entry]] = {}


def reference(name: str) -> list[Entry]:
    """RabbitMQ's transcript of scenario ``name`` (run once per test session); skips without the plugin."""
    require_rabbitmq()
    if not rabbitmq_stomp_available():
        pytest.skip("RabbitMQ's STOMP plugin is not listening on 127.0.0.1:61613, nothing to compare with "
                    "(rabbitmq-plugins enable rabbitmq_stomp)")
    if name not in _REFERENCE:
        _REFERENCE[name] = transcript(SCENARIOS[name], RABBITMQ_PORT, RABBITMQ_STOMP_PORT)
    return _REFERENCE[name]


def assert_same(actual: Iterable[Entry], expected: list[Entry], who: str) -> None:
    actual = list(actual)
    assert expected, "the scenario observed nothing"
    for index, (got, want) in enumerate(zip(actual, expected, strict=False)):
        assert got == want, f"entry {index} differs\n  {who}:  {got!r}\n  rabbitmq: {want!r}"
    assert len(actual) == len(expected), f"{who}: {len(actual)} entries, rabbitmq: {len(expected)}\n" \
        f"  {who} extra: {actual[len(expected):]!r}\n  rabbitmq extra: {expected[len(actual):]!r}"


# --- the deliberate differences (docs/stomp.md, "Differences from RabbitMQ's STOMP plugin") -----------------------
#
# The issue and STOMP 1.2 ask for three things RabbitMQ's plugin does not do; they are compared here, in this one
# place, and Leveret's side of each is asserted by tests/integration/test_stomp.py:
#   1. an ERROR carries the offending frame's receipt-id (RabbitMQ's never does, and it follows a failed
#      SUBSCRIBE's ERROR with a plain RECEIPT): receipt-id is left out of ERROR entries on both sides;
#   2. the connection closes after every ERROR (RabbitMQ keeps it after most): the comparison ends at RabbitMQ's
#      first ERROR, which Leveret must have sent at the same point with the same message and body — what
#      follows on that connection differs by design ("Server cancelled subscription" is not such an ERROR:
#      both keep the connection);
#   3. a malformed frame gets an ERROR before the close (RabbitMQ closes without a frame): where RabbitMQ's
#      entry is "closed" and Leveret's at the same point is an ERROR, the comparison ends there.
# And two scenarios where Leveret differs on purpose are not compared at all, each for the reason given.

DELIBERATE = {
    "connect/oversized_header": "Leveret refuses a frame whose command and headers exceed 64 KiB with an ERROR "
                                "(test_stomp.py); RabbitMQ has no limit",
    "messaging/transaction_send_receipt": "a COMMIT's RECEIPT waits for the transaction's write, so it comes after "
                                          "the receipts of the SENDs in it; RabbitMQ sends it first",
}
_KEPT_OPEN = "Server cancelled subscription"


def _without_receipt_id(entry: Entry) -> Entry:
    if len(entry) == 4 and entry[1] == "ERROR":
        return (*entry[:2], tuple(h for h in entry[2] if h[0] != "receipt-id"), entry[3])
    return entry


def _fatal_error(entry: Entry) -> bool:
    return len(entry) == 4 and entry[1] == "ERROR" and ("message", _KEPT_OPEN) not in entry[2]


def deliberate(actual: list[Entry], expected: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """Both transcripts as far as they are comparable, under rules 1-3 above."""
    actual = [_without_receipt_id(entry) for entry in actual]
    expected = [_without_receipt_id(entry) for entry in expected]
    for index, want in enumerate(expected):
        if _fatal_error(want):
            return actual[:index + 1], expected[:index + 1]
        if want[1:] == ("closed",) and index < len(actual) and _fatal_error(actual[index]) \
                and actual[index][0] == want[0]:
            return actual[:index], expected[:index]
    return actual, expected


def run_check(name: str, stomp_broker: tuple[int, int]) -> None:
    """The test body of every STOMP scenario (see the module docstring)."""
    expected = reference(name)
    amqp_port, stomp_port = stomp_broker
    if (amqp_port, stomp_port) == (RABBITMQ_PORT, RABBITMQ_STOMP_PORT):
        assert_same(transcript(SCENARIOS[name], amqp_port, stomp_port), expected, "rabbitmq again")
    elif name in DELIBERATE:
        pytest.skip(f"a deliberate difference from RabbitMQ (docs/stomp.md): {DELIBERATE[name]}")
    else:
        actual, expected = deliberate(transcript(SCENARIOS[name], amqp_port, stomp_port), expected)
        assert_same(actual, expected, "leveret")
