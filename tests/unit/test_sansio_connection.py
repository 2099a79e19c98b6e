"""ServerConnection, sans-IO: bytes in, Handler calls out, bytes to send.

A recording Handler collects the calls. A complete client session must give the same calls however the
stream is cut; every protocol violation must come out once, through on_connection_error or
on_channel_error, with RabbitMQ's reply code (checked against RabbitMQ 3.10 with raw frames); random byte
streams must never raise out of receive_data.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands as pc
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from leveret.amqp import codec, spec
from leveret.amqp.connection import ProtocolViolation, ServerConnection, State

Call = tuple[Any, ...]


class Recorder:
    """A Handler that records every call. On a channel error it closes the channel, as the adapter does."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.conn: ServerConnection | None = None

    def on_protocol_header(self) -> None:
        self.calls.append(("header",))

    def on_method(self, channel: int, method: spec.MethodSpec, args: tuple[Any, ...]) -> None:
        self.calls.append(("method", channel, method.full_name, args))

    def on_publish(self, channel: int, exchange: str, routing_key: str, mandatory: bool, immediate: bool,
                   address: bytes, header: bytes, body: bytes) -> None:
        self.calls.append(("publish", channel, exchange, routing_key, mandatory, immediate, address, header, body))

    def on_ack(self, channel: int, delivery_tag: int, multiple: bool) -> None:
        self.calls.append(("ack", channel, delivery_tag, multiple))

    def on_heartbeat(self) -> None:
        self.calls.append(("heartbeat",))

    def on_channel_error(self, channel: int, error: ProtocolViolation) -> None:
        self.calls.append(("channel_error", channel, error.reply_code, error.class_id, error.method_id))
        assert self.conn is not None
        self.conn.close_channel(channel, error.reply_code, error.text, error.class_id, error.method_id)

    def on_connection_error(self, error: ProtocolViolation) -> None:
        self.calls.append(("connection_error", error.reply_code, error.class_id, error.method_id))

    @property
    def errors(self) -> list[Call]:
        return [c for c in self.calls if c[0] in ("connection_error", "channel_error")]


def connect(**kwargs: Any) -> tuple[ServerConnection, Recorder]:
    recorder = Recorder()
    conn = ServerConnection(recorder, **kwargs)
    recorder.conn = conn
    return conn, recorder


# --- frame builders --------------------------------------------------------------------------------


def method(channel: int, name: str, *args: Any) -> bytes:
    return codec.method_frame(channel, spec.method(name), args)


def raw_method(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return codec.frame(spec.FRAME_METHOD, channel, struct.pack(">HH", class_id, method_id) + args)


def content_header(channel: int, size: int, props: bytes = b"\x00\x00", class_id: int = 60) -> bytes:
    return codec.frame(spec.FRAME_HEADER, channel, header_payload(size, props, class_id))


def header_payload(size: int, props: bytes = b"\x00\x00", class_id: int = 60) -> bytes:
    return struct.pack(">HHQ", class_id, 0, size) + props


def body(channel: int, data: bytes) -> bytes:
    return codec.frame(spec.FRAME_BODY, channel, data)


def publish(channel: int, exchange: str = "", routing_key: str = "q", mandatory: bool = False,
            immediate: bool = False) -> bytes:
    return method(channel, "basic.publish", 0, exchange, routing_key, mandatory, immediate)


START_OK = method(0, "connection.start-ok", {"product": "test"}, "PLAIN", b"\x00guest\x00guest", "en_US")
TUNE_OK = method(0, "connection.tune-ok", 2047, 131072, 60)
OPEN = method(0, "connection.open", "/", "", False)
HANDSHAKE = spec.PROTOCOL_HEADER + START_OK + TUNE_OK + OPEN

PROPS = codec.encode_properties({"content_type": "text/plain", "delivery_mode": 2, "headers": {"h": "v"}})
QUEUE_ARGS = {"x-max-length": 10, "x-queue-type": "classic"}

SESSION = b"".join([
    HANDSHAKE,
    method(1, "channel.open", ""),
    method(1, "queue.declare", 0, "q", False, True, False, False, False, QUEUE_ARGS),
    codec.HEARTBEAT_FRAME,
    publish(1, "amq.direct", "rk", True, False),
    content_header(1, 9, PROPS),
    body(1, b"abc"), body(1, b"def"), body(1, b"ghi"),
    method(1, "basic.ack", 5, False),
    method(1, "basic.nack", 6, True, False),
    method(1, "channel.close", 200, "bye", 0, 0),
    method(0, "connection.close", 200, "bye", 0, 0),
])

SESSION_CALLS: list[Call] = [
    ("header",),
    ("method", 0, "connection.start-ok", ({"product": "test"}, "PLAIN", b"\x00guest\x00guest", "en_US")),
    ("method", 0, "connection.tune-ok", (2047, 131072, 60)),
    ("method", 0, "connection.open", ("/", "", False)),
    ("method", 1, "channel.open", ("",)),
    ("method", 1, "queue.declare", (0, "q", False, True, False, False, False, QUEUE_ARGS)),
    ("heartbeat",),
    ("publish", 1, "amq.direct", "rk", True, False, b"\x0aamq.direct\x02rk", header_payload(9, PROPS), b"abcdefghi"),
    ("ack", 1, 5, False),
    ("method", 1, "basic.nack", (6, True, False)),
    ("method", 1, "channel.close", (200, "bye", 0, 0)),
    ("method", 0, "connection.close", (200, "bye", 0, 0)),
]


def feed(data: bytes, *chunks: int, **kwargs: Any) -> tuple[ServerConnection, Recorder]:
    conn, recorder = connect(**kwargs)
    pos = 0
    for size in chunks:
        conn.receive_data(data[pos : pos + size])
        pos += size
    conn.receive_data(data[pos:])
    return conn, recorder


def opened(*channels: int, **kwargs: Any) -> tuple[ServerConnection, Recorder]:
    """A connection past connection.open with ``channels`` open and the recorder emptied."""
    conn, recorder = feed(HANDSHAKE + b"".join(method(ch, "channel.open", "") for ch in channels), **kwargs)
    assert not recorder.errors
    recorder.calls.clear()
    return conn, recorder


def parse_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    frames = []
    pos = 0
    while pos < len(data):
        ftype, channel, size = struct.unpack_from(">BHI", data, pos)
        assert data[pos + 7 + size] == 0xCE
        frames.append((ftype, channel, data[pos + 7 : pos + 7 + size]))
        pos += 8 + size
    return frames


# --- a whole session -------------------------------------------------------------------------------


def test_a_complete_session() -> None:
    conn, recorder = feed(SESSION)
    assert recorder.calls == SESSION_CALLS
    assert conn.state is State.CLOSED
    assert conn.channels == {}
    assert conn.bytes_received == len(SESSION)


def test_the_session_split_at_every_byte_boundary_gives_the_same_calls() -> None:
    for cut in range(len(SESSION) + 1):
        _, recorder = feed(SESSION, cut)
        assert recorder.calls == SESSION_CALLS, cut


def test_the_session_one_byte_at_a_time_gives_the_same_calls() -> None:
    _, recorder = feed(SESSION, *([1] * len(SESSION)))
    assert recorder.calls == SESSION_CALLS


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200), max_size=60))
def test_the_session_in_random_chunks_gives_the_same_calls(chunks: list[int]) -> None:
    _, recorder = feed(SESSION, *chunks)
    assert recorder.calls == SESSION_CALLS


def test_session_from_pamqp_frames() -> None:
    props = pc.Basic.Properties(content_type="application/json", headers={"n": 1}, priority=4)
    frames = [
        pc.Connection.StartOk(client_properties={"product": "pamqp"}, response="\x00guest\x00guest"),
        pc.Connection.TuneOk(channel_max=10, frame_max=4096, heartbeat=0),
        pc.Connection.Open(virtual_host="/"),
    ]
    data = spec.PROTOCOL_HEADER + b"".join(pamqp_frame.marshal(f, 0) for f in frames)
    data += pamqp_frame.marshal(pc.Channel.Open(), 3)
    data += pamqp_frame.marshal(pc.Basic.Publish(exchange="ex", routing_key="k", immediate=True), 3)
    data += pamqp_frame.marshal(pamqp_header.ContentHeader(0, 6, props), 3)
    data += pamqp_frame.marshal(pamqp_body.ContentBody(b"pamqp!"), 3)
    data += pamqp_frame.marshal(pc.Basic.Ack(delivery_tag=9, multiple=True), 3)
    _, recorder = feed(data)
    assert not recorder.errors
    assert recorder.calls[-3][:4] == ("method", 3, "channel.open", ("",))
    kind, channel, exchange, routing_key, mandatory, immediate, address, header, payload = recorder.calls[-2]
    assert (kind, channel, exchange, routing_key, mandatory, immediate, payload) == \
        ("publish", 3, "ex", "k", False, True, b"pamqp!")
    assert address == b"\x02ex\x01k"
    assert codec.decode_properties(header[12:]) == {"content_type": "application/json", "headers": {"n": 1},
                                                    "priority": 4}
    assert recorder.calls[-1] == ("ack", 3, 9, True)


def test_zero_size_content_is_published_at_its_header() -> None:
    conn, recorder = opened(1)
    conn.receive_data(publish(1) + content_header(1, 0) + method(1, "basic.qos", 0, 1, False))
    assert recorder.calls == [("publish", 1, "", "q", False, False, b"\x00\x01q", header_payload(0), b""),
                              ("method", 1, "basic.qos", (0, 1, False))]


def test_contents_interleave_across_channels() -> None:
    conn, recorder = opened(1, 2)
    conn.receive_data(publish(1, routing_key="a") + publish(2, routing_key="b") + content_header(2, 2)
                      + content_header(1, 2) + body(1, b"1") + body(2, b"22") + body(1, b"1"))
    assert [(c[0], c[1], c[3], c[8]) for c in recorder.calls] == [("publish", 2, "b", b"22"),
                                                                 ("publish", 1, "a", b"11")]


def test_message_of_exactly_max_message_size_is_accepted() -> None:
    conn, recorder = opened(1, max_message_size=10)
    conn.receive_data(publish(1) + content_header(1, 10) + body(1, b"0123456789"))
    assert recorder.calls[0][8] == b"0123456789"


def test_ack_with_multiple() -> None:
    conn, recorder = opened(1)
    conn.receive_data(method(1, "basic.ack", 2**64 - 1, True))
    assert recorder.calls == [("ack", 1, 2**64 - 1, True)]


def test_protocol_header_in_pieces_and_amqp_0_9_header() -> None:
    conn, recorder = connect()
    conn.receive_data(b"AMQ")
    conn.receive_data(b"P\x00\x00")
    assert recorder.calls == []
    conn.receive_data(b"\x09\x01")
    assert recorder.calls == [("header",)]
    assert conn.state is State.AWAIT_START_OK
    _, recorder = feed(b"AMQP\x01\x01\x00\x09" + START_OK)
    assert recorder.calls[0] == ("header",)
    assert recorder.calls[1][2] == "connection.start-ok"
    assert not recorder.errors


# --- output ----------------------------------------------------------------------------------------


def test_send_deliver_cuts_the_body_at_frame_max_minus_eight() -> None:
    conn, _ = connect(frame_max=4096)
    header = header_payload(10000, PROPS)
    data = bytes(range(256)) * 40
    conn.send_deliver(5, codec.encode_shortstr("ctag"), 42, True, b"\x02ex\x02rk", header, data[:10000])
    assert conn.has_output()
    out = conn.data_to_send()
    assert conn.data_to_send() == b""
    assert not conn.has_output()
    frames = parse_frames(out)
    assert [(t, ch, len(p)) for t, ch, p in frames] == [(1, 5, len(frames[0][2])), (2, 5, len(header)),
                                                        (3, 5, 4088), (3, 5, 4088), (3, 5, 1824)]
    assert codec.decode_method_payload(frames[0][2]) == (spec.method("basic.deliver"), ("ctag", 42, True, "ex", "rk"))
    assert frames[1][2] == header
    assert b"".join(p for _, _, p in frames[2:]) == data[:10000]
    # and pamqp reads the same stream
    commands = []
    pos = 0
    while pos < len(out):
        consumed, channel, command = pamqp_frame.unmarshal(out[pos:])
        assert channel == 5
        commands.append(command)
        pos += consumed
    deliver, pheader, *bodies = commands
    assert isinstance(deliver, pc.Basic.Deliver)
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered) == ("ctag", 42, True)
    assert isinstance(pheader, pamqp_header.ContentHeader)
    assert pheader.body_size == 10000
    assert pheader.properties.content_type == "text/plain"
    assert all(isinstance(b, pamqp_body.ContentBody) for b in bodies)
    assert b"".join(b.value for b in bodies if isinstance(b, pamqp_body.ContentBody)) == data[:10000]


@pytest.mark.parametrize(("size", "sizes"), [(0, []), (1, [1]), (131064, [131064]), (131065, [131064, 1])])
def test_send_content_body_sizes(size: int, sizes: list[int]) -> None:
    conn, _ = connect()
    args = (7, False, "ex", "rk", 3)
    conn.send_content(2, spec.method("basic.get-ok"), args, header_payload(size), b"b" * size)
    frames = parse_frames(conn.data_to_send())
    assert codec.decode_method_payload(frames[0][2]) == (spec.method("basic.get-ok"), args)
    assert frames[1] == (spec.FRAME_HEADER, 2, header_payload(size))
    assert [len(p) for t, _, p in frames[2:] if t == spec.FRAME_BODY] == sizes
    assert len(frames) == 2 + len(sizes)


def test_output_methods_queue_in_order() -> None:
    conn, _ = connect()
    conn.send_method(0, spec.method("connection.tune"), (2047, 131072, 60))
    conn.send_heartbeat()
    conn.send_content(1, spec.method("basic.return"), (312, "NO_ROUTE", "ex", "rk"), header_payload(1), b"x")
    conn.close_channel(3, 404, "NOT_FOUND - gone", 50, 10)
    conn.close(320, "CONNECTION_FORCED - bye")
    conn.close(320, "again")  # a second close sends nothing
    frames = parse_frames(conn.data_to_send())
    names = [codec.decode_method_payload(p)[0].full_name if t == 1 else t for t, _, p in frames]
    assert names == ["connection.tune", 8, "basic.return", 2, 3, "channel.close", "connection.close"]
    assert codec.decode_method_payload(frames[5][2])[1] == (404, "NOT_FOUND - gone", 50, 10)
    assert codec.decode_method_payload(frames[6][2])[1] == (320, "CONNECTION_FORCED - bye", 0, 0)
    assert conn.state is State.CLOSING


def test_reply_texts_are_cut_to_255_bytes_at_a_character_boundary() -> None:
    conn, _ = connect()
    conn.close_channel(1, 404, "NOT_FOUND - " + "é" * 200)
    conn.close(320, "CONNECTION_FORCED - " + "ü" * 200)  # 420 bytes of UTF-8: a short string holds 255
    frames = parse_frames(conn.data_to_send())
    texts = [codec.decode_method_payload(p)[1][1] for _, _, p in frames]
    assert texts == ["NOT_FOUND - " + "é" * 121, "CONNECTION_FORCED - " + "ü" * 117]
    assert [len(t.encode()) for t in texts] == [254, 254]


# --- protocol violations ---------------------------------------------------------------------------


def test_bad_protocol_header_sends_ours_and_fails_with_501() -> None:
    conn, recorder = feed(b"GET / HTTP/1.1\r\n\r\n")
    assert recorder.calls == [("connection_error", spec.FRAME_ERROR, 0, 0)]
    assert conn.data_to_send() == spec.PROTOCOL_HEADER
    assert conn.state is State.CLOSED
    conn.receive_data(HANDSHAKE)
    assert len(recorder.calls) == 1


@pytest.mark.parametrize("header", [b"AMQP\x00\x00\x09\x00", b"AMQP\x00\x00\x08\x00", b"AMQP\x01\x01\x08\x00",
                                    b"amqp\x00\x00\x09\x01"])
def test_other_protocol_versions_are_refused(header: bytes) -> None:
    conn, recorder = feed(header + START_OK)
    assert recorder.calls == [("connection_error", spec.FRAME_ERROR, 0, 0)]
    assert conn.data_to_send() == spec.PROTOCOL_HEADER


def after_open(data: bytes, **kwargs: Any) -> list[Call]:
    """The calls ``data`` makes on a connection past connection.open with channel 1 open."""
    conn, recorder = opened(1, **kwargs)
    conn.receive_data(data)
    return recorder.calls


def connection_error(code: int, class_id: int = 0, method_id: int = 0) -> Call:
    return ("connection_error", code, class_id, method_id)


QOS = method(1, "basic.qos", 0, 1, False)

# Each case checked against RabbitMQ 3.10 with raw frames.
VIOLATIONS: dict[str, tuple[bytes, Call]] = {
    "payload larger than frame_max": (raw_method(1, 60, 10, b"\x00" * (131072 - 3)),
                                      connection_error(spec.FRAME_ERROR)),
    "bad frame end": (QOS[:-1] + b"\x00", connection_error(spec.FRAME_ERROR)),
    "unknown frame type": (codec.frame(5, 1, b"abc"), connection_error(spec.FRAME_ERROR)),
    "unknown frame type on channel 0": (codec.frame(0, 0, b""), connection_error(spec.FRAME_ERROR)),
    "heartbeat on channel 1": (codec.frame(8, 1, b""), connection_error(spec.UNEXPECTED_FRAME)),
    "heartbeat with a payload": (codec.frame(8, 0, b"ab"), connection_error(spec.FRAME_ERROR)),
    "method frame shorter than its ids": (codec.frame(1, 1, b"\x00\x3c"), connection_error(spec.FRAME_ERROR)),
    "method on a channel never opened": (method(2, "basic.qos", 0, 1, False),
                                         connection_error(spec.CHANNEL_ERROR, 60, 10)),
    "second channel.open": (method(1, "channel.open", ""), connection_error(spec.CHANNEL_ERROR, 20, 10)),
    "connection method on an open channel": (method(1, "connection.close", 200, "", 0, 0),
                                             connection_error(spec.COMMAND_INVALID, 10, 50)),
    "connection method on a channel never opened": (method(2, "connection.close", 200, "", 0, 0),
                                                    connection_error(spec.CHANNEL_ERROR, 10, 50)),
    "queue method on channel 0": (method(0, "queue.declare", 0, "", False, False, False, False, False, {}),
                                  connection_error(spec.CHANNEL_ERROR, 50, 10)),
    "channel.open on channel 0": (method(0, "channel.open", ""), connection_error(spec.CHANNEL_ERROR, 20, 10)),
    "connection.open twice": (OPEN, connection_error(spec.CHANNEL_ERROR, 10, 40)),
    "connection.tune-ok when open": (TUNE_OK, connection_error(spec.CHANNEL_ERROR, 10, 31)),
    "connection.close-ok when open": (method(0, "connection.close-ok"), connection_error(spec.CHANNEL_ERROR, 10, 51)),
    "connection.start from the client": (method(0, "connection.start", 0, 9, {}, b"PLAIN", b"en_US"),
                                         connection_error(spec.CHANNEL_ERROR, 10, 10)),
    "header frame without a publish": (content_header(1, 3), connection_error(spec.UNEXPECTED_FRAME)),
    "body frame without a publish": (body(1, b"abc"), connection_error(spec.UNEXPECTED_FRAME)),
    "header frame on channel 0": (content_header(0, 3), connection_error(spec.UNEXPECTED_FRAME)),
    "method frame while a header is expected": (publish(1) + QOS, connection_error(spec.UNEXPECTED_FRAME, 60, 10)),
    "method frame while a body is expected": (publish(1) + content_header(1, 3) + QOS,
                                              connection_error(spec.UNEXPECTED_FRAME, 60, 10)),
    "body frame while a header is expected": (publish(1) + body(1, b"abc"), connection_error(spec.UNEXPECTED_FRAME)),
    "header frame while a body is expected": (publish(1) + content_header(1, 3) + content_header(1, 3),
                                              connection_error(spec.UNEXPECTED_FRAME)),
    "header frame for another class": (publish(1) + content_header(1, 3, class_id=50),
                                       connection_error(spec.UNEXPECTED_FRAME)),
    "header frame too short": (publish(1) + codec.frame(2, 1, b"\x00\x3c\x00\x00"),
                               connection_error(spec.FRAME_ERROR)),
    # RabbitMQ 3.10 never completes such a content (it waits for more body forever); we refuse it at once.
    "body longer than announced": (publish(1) + content_header(1, 3) + body(1, b"abcd"),
                                   connection_error(spec.FRAME_ERROR)),
    "body longer than announced over two frames": (publish(1) + content_header(1, 3) + body(1, b"ab")
                                                   + body(1, b"cd"), connection_error(spec.FRAME_ERROR)),
    "basic.deliver from the client": (method(1, "basic.deliver", "ct", 1, False, "", "q"),
                                      connection_error(spec.COMMAND_INVALID, 60, 60)),
    "basic.get-ok from the client": (method(1, "basic.get-ok", 1, False, "", "q", 0),
                                     connection_error(spec.COMMAND_INVALID, 60, 71)),
    "basic.consume-ok from the client": (method(1, "basic.consume-ok", "ct"),
                                         connection_error(spec.COMMAND_INVALID, 60, 21)),
    "channel.open-ok from the client": (method(1, "channel.open-ok", b""),
                                        connection_error(spec.COMMAND_INVALID, 20, 11)),
    "channel.close-ok on an open channel": (method(1, "channel.close-ok"),
                                            connection_error(spec.COMMAND_INVALID, 20, 41)),
    "channel.flow-ok from the client": (method(1, "channel.flow-ok", True),
                                        connection_error(spec.COMMAND_INVALID, 20, 21)),
    # RabbitMQ 3.10 drops the TCP connection without a connection.close on an unknown class or method.
    "unknown method": (raw_method(1, 60, 999), connection_error(spec.COMMAND_INVALID, 60, 999)),
    "unknown class": (raw_method(1, 99, 10), connection_error(spec.COMMAND_INVALID, 99, 10)),
    "unknown method on channel 0": (raw_method(0, 10, 99), connection_error(spec.COMMAND_INVALID, 10, 99)),
    "arguments cut short": (raw_method(1, 60, 10, b"\x00\x00\x00\x00\x00\x01"),
                            connection_error(spec.FRAME_ERROR, 60, 10)),
    "bytes after the arguments": (raw_method(1, 60, 10, b"\x00\x00\x00\x00\x00\x01\x00zz"),
                                  connection_error(spec.FRAME_ERROR, 60, 10)),
    "short string not UTF-8": (raw_method(1, 50, 10, b"\x00\x00\x02\xff\xfe\x00\x00\x00\x00\x00"),
                               connection_error(spec.FRAME_ERROR, 50, 10)),
    "table overruns its size": (raw_method(1, 50, 10, b"\x00\x00\x01q\x00\x00\x00\x00\x09\x01aI\x00\x00\x00\x01"),
                                connection_error(spec.FRAME_ERROR, 50, 10)),
    "publish arguments cut short": (raw_method(1, 60, 40, b"\x00\x00\x01e\x01"),
                                    connection_error(spec.FRAME_ERROR, 60, 40)),
    "publish exchange not UTF-8": (raw_method(1, 60, 40, b"\x00\x00\x01\xff\x00\x00"),
                                   connection_error(spec.FRAME_ERROR, 60, 40)),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violation(name: str) -> None:
    data, expected = VIOLATIONS[name]
    conn, recorder = opened(1)
    conn.receive_data(data + QOS)  # the qos after the violation must not be parsed
    assert recorder.calls == [expected]
    assert conn.state is State.CLOSING  # connection.close sent, waiting for close-ok
    sent = conn.data_to_send()
    close = codec.decode_method_payload(sent[sent.rindex(b"\x01\x00\x00") + 7 : -1])
    assert close[0].full_name == "connection.close" and close[1][0] == expected[1]
    conn.receive_data(QOS)
    assert recorder.calls == [expected]
    conn.receive_data(method(0, "connection.close-ok"))  # not read either: the stream may be out of sync
    assert recorder.calls == [expected] and conn.failed


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violation_fed_byte_by_byte(name: str) -> None:
    data, expected = VIOLATIONS[name]
    conn, recorder = opened(1)
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
    conn.receive_data(QOS)
    assert recorder.calls == [expected]


def test_frame_max_counts_the_payload_as_rabbitmq_does() -> None:
    # RabbitMQ accepts a payload of frame_max bytes (FRAME_SIZE_FUDGE), one more is a frame error.
    fits = raw_method(1, 60, 10, b"\x00\x00\x00\x00\x00\x01\x00" + b"z" * (4096 - 11))
    assert after_open(fits, frame_max=4096) == [connection_error(spec.FRAME_ERROR, 60, 10)]  # decoded: extra bytes
    too_big = raw_method(1, 60, 10, b"\x00\x00\x00\x00\x00\x01\x00" + b"z" * (4096 - 10))
    assert after_open(too_big, frame_max=4096) == [connection_error(spec.FRAME_ERROR)]


def test_frame_too_large_is_seen_from_its_header_alone() -> None:
    conn, recorder = opened(1, frame_max=4096)
    conn.receive_data(struct.pack(">BHI", 3, 1, 5000) + b"x")  # the 5000 bytes need not arrive
    assert recorder.calls == [connection_error(spec.FRAME_ERROR)]


def test_frames_before_tune_ok_are_limited_to_the_minimum_frame_size() -> None:
    def start_ok(payload_size: int) -> bytes:
        base = codec.encode_method_payload(spec.method("connection.start-ok"), ({"p": ""}, "PLAIN", b"", "en_US"))
        padded = {"p": "x" * (payload_size - len(base))}
        return method(0, "connection.start-ok", padded, "PLAIN", b"", "en_US")

    assert len(start_ok(4096)) == 4096 + 8
    _, recorder = feed(spec.PROTOCOL_HEADER + start_ok(4096))
    assert recorder.calls[1][2] == "connection.start-ok"
    _, recorder = feed(spec.PROTOCOL_HEADER + start_ok(4097))
    assert recorder.calls == [("header",), connection_error(spec.FRAME_ERROR)]
    # after tune-ok the negotiated frame_max applies
    _conn, recorder = feed(spec.PROTOCOL_HEADER + START_OK + TUNE_OK + OPEN + method(1, "channel.open", "")
                          + publish(1) + content_header(1, 20000) + body(1, b"b" * 20000))
    assert not recorder.errors
    assert recorder.calls[-1][8] == b"b" * 20000


@pytest.mark.parametrize("data", [method(1, "channel.open", ""), method(1, "basic.qos", 0, 1, False),
                                  method(1, "connection.close", 200, "", 0, 0)],
                         ids=["channel.open", "basic.qos", "connection.close"])
@pytest.mark.parametrize("handshake", [spec.PROTOCOL_HEADER, spec.PROTOCOL_HEADER + START_OK,
                                       spec.PROTOCOL_HEADER + START_OK + TUNE_OK],
                         ids=["awaiting start-ok", "awaiting tune-ok", "awaiting open"])
def test_channel_frames_before_connection_open_are_unexpected(handshake: bytes, data: bytes) -> None:
    _, recorder = feed(handshake + data)
    assert recorder.calls[-1][:2] == ("connection_error", spec.UNEXPECTED_FRAME)
    assert len(recorder.errors) == 1


@pytest.mark.parametrize(
    ("handshake", "data", "class_method"),
    [
        (spec.PROTOCOL_HEADER, TUNE_OK, (10, 31)),
        (spec.PROTOCOL_HEADER, OPEN, (10, 40)),
        (spec.PROTOCOL_HEADER + START_OK, START_OK, (10, 11)),
        (spec.PROTOCOL_HEADER + START_OK, OPEN, (10, 40)),
        (spec.PROTOCOL_HEADER + START_OK + TUNE_OK, TUNE_OK, (10, 31)),
        (spec.PROTOCOL_HEADER + START_OK + TUNE_OK, method(0, "channel.open", ""), (20, 10)),
    ],
    ids=["tune-ok before start-ok", "open before start-ok", "start-ok twice", "open before tune-ok",
         "tune-ok twice", "channel.open on channel 0 before open"],
)
def test_handshake_methods_out_of_order(handshake: bytes, data: bytes, class_method: tuple[int, int]) -> None:
    _, recorder = feed(handshake + data)
    assert recorder.calls[-1] == connection_error(spec.CHANNEL_ERROR, *class_method)


@pytest.mark.parametrize("handshake", [spec.PROTOCOL_HEADER, spec.PROTOCOL_HEADER + START_OK,
                                       spec.PROTOCOL_HEADER + START_OK + TUNE_OK, HANDSHAKE],
                         ids=["awaiting start-ok", "awaiting tune-ok", "awaiting open", "open"])
def test_connection_close_is_accepted_in_every_state(handshake: bytes) -> None:
    conn, recorder = feed(handshake + method(0, "connection.close", 200, "", 0, 0) + QOS)
    assert recorder.calls[-1] == ("method", 0, "connection.close", (200, "", 0, 0))
    assert conn.state is State.CLOSED


def test_channel_max_limits_the_number_of_open_channels_not_their_numbers() -> None:
    # RabbitMQ 3.10: "number of channels opened (3) has reached the negotiated channel_max (3)", 530
    conn, recorder = opened(channel_max=3)
    conn.receive_data(method(100, "channel.open", "") + method(2000, "channel.open", "")
                      + method(65535, "channel.open", ""))
    assert [c[1] for c in recorder.calls] == [100, 2000, 65535]
    conn.receive_data(method(4, "channel.open", ""))
    assert recorder.calls[-1] == connection_error(spec.NOT_ALLOWED)


def test_closed_channels_free_their_place_under_channel_max() -> None:
    conn, recorder = opened(1, 2, channel_max=2)
    conn.receive_data(method(1, "channel.close", 200, "", 0, 0) + method(3, "channel.open", ""))
    assert recorder.calls[-1] == ("method", 3, "channel.open", ("",))
    assert not recorder.errors


# --- channel-level errors and closing channels -----------------------------------------------------


def test_message_larger_than_max_message_size_closes_the_channel_with_406() -> None:
    conn, recorder = opened(1, 2, max_message_size=10)
    conn.receive_data(publish(1) + content_header(1, 11) + body(1, b"0123456789") + body(1, b"X")
                      + QOS + publish(1) + content_header(1, 1) + body(1, b"Y")
                      + method(2, "basic.qos", 0, 2, False))
    assert recorder.calls == [("channel_error", 1, spec.PRECONDITION_FAILED, 60, 40),
                              ("method", 2, "basic.qos", (0, 2, False))]
    [(ftype, channel, payload)] = parse_frames(conn.data_to_send())
    close, (code, text, class_id, method_id) = codec.decode_method_payload(payload)
    assert (ftype, channel, close.full_name, code, class_id, method_id) == (1, 1, "channel.close", 406, 60, 40)
    assert "larger than configured max size" in text
    recorder.calls.clear()
    conn.receive_data(method(1, "channel.close-ok") + method(1, "channel.open", "") + QOS)
    assert recorder.calls == [("method", 1, "channel.close-ok", ()), ("method", 1, "channel.open", ("",)),
                              ("method", 1, "basic.qos", (0, 1, False))]


def test_after_close_channel_only_close_and_close_ok_count() -> None:
    conn, recorder = opened(1, 2)
    conn.close_channel(1, 404, "NOT_FOUND - no queue", 50, 10)
    conn.data_to_send()
    conn.receive_data(QOS + publish(1) + content_header(1, 3) + body(1, b"abc") + method(1, "basic.ack", 1, False)
                      + raw_method(1, 60, 10, b"garbage") + method(2, "basic.qos", 0, 5, False))
    assert recorder.calls == [("method", 2, "basic.qos", (0, 5, False))]
    conn.receive_data(method(1, "channel.close", 200, "", 0, 0))
    assert [codec.decode_method_payload(p)[0].full_name for _, _, p in parse_frames(conn.data_to_send())] == \
        ["channel.close-ok"]
    conn.receive_data(method(1, "channel.close-ok"))
    assert recorder.calls[-1] == ("method", 1, "channel.close-ok", ())
    assert 1 not in conn.channels
    conn.receive_data(QOS)
    assert recorder.calls[-1] == connection_error(spec.CHANNEL_ERROR, 60, 10)  # closed now: "expected 'channel.open'"


def test_close_channel_drops_a_content_in_progress() -> None:
    conn, recorder = opened(1)
    conn.receive_data(publish(1) + content_header(1, 6) + body(1, b"abc"))
    conn.close_channel(1, 406, "PRECONDITION_FAILED - x")
    conn.receive_data(body(1, b"def") + method(1, "channel.close-ok") + method(1, "channel.open", "") + QOS)
    assert recorder.calls == [("method", 1, "channel.close-ok", ()), ("method", 1, "channel.open", ("",)),
                              ("method", 1, "basic.qos", (0, 1, False))]


def test_channel_open_on_a_closing_channel_is_a_channel_error() -> None:
    # RabbitMQ 3.10: 504 "second 'channel.open' seen"
    conn, recorder = opened(1)
    conn.close_channel(1, 404, "NOT_FOUND")
    conn.receive_data(method(1, "channel.open", ""))
    assert recorder.calls == [connection_error(spec.CHANNEL_ERROR, 20, 10)]


def test_after_our_connection_close_only_channel_0_methods_count() -> None:
    conn, recorder = opened(1)
    conn.close(320, "CONNECTION_FORCED - shutdown")
    conn.receive_data(QOS + publish(1) + content_header(1, 3) + body(1, b"abc") + codec.frame(8, 1, b"")
                      + content_header(0, 1) + OPEN + method(0, "connection.close-ok") + QOS)
    assert recorder.calls == [("method", 0, "connection.close-ok", ())]
    assert conn.state is State.CLOSED


def test_crossing_connection_close_while_closing() -> None:
    conn, recorder = opened(1)
    conn.close(320, "CONNECTION_FORCED - shutdown")
    conn.receive_data(method(0, "connection.close", 200, "", 0, 0))
    assert recorder.calls == [("method", 0, "connection.close", (200, "", 0, 0))]
    assert conn.state is State.CLOSING


def test_nothing_is_parsed_after_a_connection_error() -> None:
    conn, recorder = opened(1)
    conn.receive_data(codec.frame(5, 0, b"") + QOS + publish(1))
    conn.receive_data(content_header(1, 1) + body(1, b"x") + HANDSHAKE)
    assert recorder.calls == [connection_error(spec.FRAME_ERROR)]
    sent = conn.data_to_send()  # only our connection.close
    assert codec.decode_method_payload(sent[7:-1])[0].full_name == "connection.close"
    assert len(sent) == 8 + int.from_bytes(sent[3:7], "big")


# --- fuzzing ---------------------------------------------------------------------------------------


def check_fuzzed(conn: ServerConnection, recorder: Recorder, chunks: list[bytes]) -> None:
    for chunk in chunks:
        conn.receive_data(chunk)
    errors = [i for i, c in enumerate(recorder.calls) if c[0] == "connection_error"]
    assert len(errors) <= 1
    if errors:
        assert errors[0] == len(recorder.calls) - 1
        assert conn.failed and conn.state in (State.CLOSING, State.CLOSED)
    for call in recorder.calls:
        if call[0] in ("connection_error", "channel_error"):
            assert call[2 if call[0] == "channel_error" else 1] in spec.REPLY_NAMES
    conn.data_to_send()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=8))
def test_random_bytes_after_the_handshake_never_raise(chunks: list[bytes]) -> None:
    conn, recorder = opened(1, 2)
    check_fuzzed(conn, recorder, chunks)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_the_protocol_header_never_raise(data: bytes) -> None:
    conn, recorder = connect()
    check_fuzzed(conn, recorder, [spec.PROTOCOL_HEADER, data])


# Well-framed frames with random contents, so the fuzzer gets past the framing into the state machine.
fuzz_payloads = st.one_of(
    st.sampled_from(spec.METHODS).map(lambda m: struct.pack(">HH", m.class_id, m.method_id)).flatmap(
        lambda ids: st.binary(max_size=24).map(lambda rest: ids + rest)),
    st.sampled_from([method(1, "basic.qos", 0, 1, False)[7:-1], publish(1)[7:-1], header_payload(3),
                     header_payload(0), method(1, "channel.close-ok")[7:-1], method(2, "channel.open", "")[7:-1]]),
    st.binary(max_size=16),
)
fuzz_frames = st.builds(
    lambda ftype, channel, payload, end: (struct.pack(">BHI", ftype, channel, len(payload)) + payload
                                          + (b"\xce" if end else b"\x00")),
    st.sampled_from([1, 1, 1, 2, 3, 8, 4]), st.integers(min_value=0, max_value=3), fuzz_payloads,
    st.integers(min_value=0, max_value=9).map(bool),  # mostly a good frame end
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzz_frames, max_size=12), st.data())
def test_random_frames_never_raise(frames: list[bytes], data: st.DataObject) -> None:
    conn, recorder = opened(1, 2, max_message_size=4)
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=4)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    check_fuzzed(conn, recorder, chunks)
    # the same stream in one piece gives the same calls
    whole, whole_recorder = opened(1, 2, max_message_size=4)
    whole.receive_data(stream)
    assert whole_recorder.calls == recorder.calls
