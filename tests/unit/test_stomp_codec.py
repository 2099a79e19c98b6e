"""The sans-IO STOMP codec (leveret/stomp/): frames, escaping per version, bodies, heart-beats, limits, and
RabbitMQ's mapping of headers and destinations."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import leveret.stomp
from leveret.amqp.fields import Int8, LongInt
from leveret.stomp import Frame, FrameError, StompConnection, parse_destination, serialize
from leveret.stomp.frames import escape, unescape
from leveret.stomp.mapping import (
    Destination,
    DestinationError,
    HeaderError,
    first_headers,
    format_destination,
    headers_from_properties,
    properties_from_headers,
)


def parse(data: bytes, version: str = "1.2", **limits: int) -> list[Frame]:
    """The frames of ``data``; raises the connection's FrameError when the input is not STOMP."""
    conn = StompConnection(**limits)
    conn.version = version
    frames = conn.receive_data(data)
    if conn.error is not None:
        raise conn.error
    return frames


def test_nul_terminated_frame_and_heartbeats_between_frames() -> None:
    frames = parse(b"\n\r\nSEND\ndestination:/queue/a\n\nhello\x00\n\nSEND\ndestination:/queue/b\n\n\x00\n")
    assert [(f.command, f.headers, f.body) for f in frames] == [
        ("SEND", [("destination", "/queue/a")], b"hello"), ("SEND", [("destination", "/queue/b")], b"")]


def test_content_length_body_may_hold_nul() -> None:
    (frame,) = parse(b"SEND\ncontent-length:5\n\na\x00b\x00c\x00")
    assert frame.body == b"a\x00b\x00c"


def test_content_length_not_followed_by_nul_is_an_error() -> None:
    with pytest.raises(FrameError, match="not followed by NUL"):
        parse(b"SEND\ncontent-length:2\n\nabc\x00")


def test_crlf_line_endings() -> None:
    (frame,) = parse(b"SEND\r\ndestination:/queue/a\r\nk:v\r\n\r\nbody\x00")
    assert frame.command == "SEND"
    assert frame.headers == [("destination", "/queue/a"), ("k", "v")]
    assert frame.body == b"body"


def test_frames_split_across_reads_in_any_place() -> None:
    data = b"SEND\ndestination:/queue/a\ncontent-length:3\n\nabc\x00\nSEND\ndestination:/queue/b\n\nxyz\x00"
    for cut in range(1, len(data)):
        conn = StompConnection()
        frames = conn.receive_data(data[:cut]) + conn.receive_data(data[cut:])
        assert [f.body for f in frames] == [b"abc", b"xyz"], cut


def test_byte_at_a_time() -> None:
    conn = StompConnection()
    frames = []
    for byte in b"MESSAGE\na:b\n\nbody\x00":
        frames += conn.receive_data(bytes([byte]))
    assert [(f.command, f.body) for f in frames] == [("MESSAGE", b"body")]


def test_first_header_wins() -> None:
    (frame,) = parse(b"SEND\nk:first\nk:second\n\n\x00")
    assert frame.get("k") == "first"
    assert first_headers(frame.headers) == {"k": "first"}


@pytest.mark.parametrize(("version", "raw", "value"), [
    ("1.2", "a\\nb\\cc\\\\d\\re", "a\nb:c\\d\re"),
    ("1.1", "a\\nb\\cc\\\\d", "a\nb:c\\d"),
    ("1.0", "a\\nb", "a\\nb"),
])
def test_unescape_per_version(version: str, raw: str, value: str) -> None:
    assert unescape(raw, version) == value


@pytest.mark.parametrize(("version", "raw"), [("1.2", "a\\tb"), ("1.1", "a\\rb"), ("1.2", "trailing\\")])
def test_bad_escape_is_an_error(version: str, raw: str) -> None:
    with pytest.raises(FrameError) as info:
        parse(f"SEND\nk:{raw}\n\n\x00".encode(), version)
    assert info.value.message == "Bad header escape"


def test_connect_headers_are_not_unescaped() -> None:
    (frame,) = parse(b"CONNECT\npasscode:a\\tb\n\n\x00")
    assert frame.get("passcode") == "a\\tb"


def test_connection_fails_once_after_the_good_frames_and_then_reads_nothing() -> None:
    conn = StompConnection()
    frames = conn.receive_data(b"SEND\nk:ok\n\nfirst\x00SEND\nk:\\x\n\n\x00SEND\n\nlost\x00")
    assert [f.body for f in frames] == [b"first"]
    assert conn.failed and conn.error is not None and conn.error.message == "Bad header escape"
    assert conn.receive_data(b"SEND\n\n\x00") == []


def test_header_section_limit() -> None:
    with pytest.raises(FrameError) as info:
        parse(b"SEND\nk:" + b"x" * 5000 + b"\n\n\x00", max_header_bytes=4096)
    assert info.value.message == "Headers too large"
    conn = StompConnection(max_header_bytes=4096)  # also before the end of the headers has arrived
    assert conn.receive_data(b"SEND\nk:" + b"x" * 5000) == []
    assert conn.error is not None and conn.error.message == "Headers too large"


def test_header_count_limit() -> None:
    with pytest.raises(FrameError, match="at most 3 headers"):
        parse(b"SEND\na:1\nb:2\nc:3\nd:4\n\n\x00", max_headers=3)


def test_body_limit_with_and_without_content_length() -> None:
    with pytest.raises(FrameError) as info:
        parse(b"SEND\ncontent-length:11\n\n", max_body=10)
    assert info.value.message == "Frame too large"
    with pytest.raises(FrameError, match="over the limit"):
        parse(b"SEND\n\n" + b"x" * 11, max_body=10)


def test_malformed_header_and_content_length() -> None:
    with pytest.raises(FrameError, match="has no ':'"):
        parse(b"SEND\nnocolon\n\n\x00")
    with pytest.raises(FrameError, match="content-length 'x'"):
        parse(b"SEND\ncontent-length:x\n\n\x00")


def test_serialize_escapes_and_adds_content_length() -> None:
    frame = Frame("MESSAGE", [("a:b", "c\nd"), ("content-length", "99")], b"xyz")
    assert serialize(frame, "1.2") == b"MESSAGE\na\\cb:c\\nd\ncontent-length:3\n\nxyz\x00\n"
    assert serialize(frame, "1.0") == b"MESSAGE\na:b:c\nd\ncontent-length:3\n\nxyz\x00\n"
    assert serialize(Frame("CONNECTED", [("session", "a:b")]), "1.2") == b"CONNECTED\nsession:a:b\n\n\x00\n"


def test_a_10_client_is_escaped_and_unescaped_as_rabbitmq_does() -> None:
    """1.0 defines no escapes; RabbitMQ's plugin writes 1.1's escapes to a 1.0 client and unescapes its input as
    1.2's (an undefined escape is an error), and so does Leveret (tests/differential: escaping_10_*)."""
    conn = StompConnection()
    conn.version = "1.0"
    conn.send(Frame("MESSAGE", [("k", "a\nb:c")]))
    assert conn.data_to_send() == b"MESSAGE\nk:a\\nb\\cc\n\n\x00\n"
    (frame,) = conn.receive_data(b"SEND\nk:a\\nb\\c\\\\\\r\n\n\x00")
    assert frame.get("k") == "a\nb:\\\r"
    assert conn.receive_data(b"SEND\nk:bad\\q\n\n\x00") == []
    assert conn.error is not None and conn.error.message == "Bad header escape"
    (connect,) = StompConnection().receive_data(b"CONNECT\nlogin:a\\nb\n\n\x00")  # CONNECT: never unescaped
    assert connect.get("login") == "a\\nb"


def test_output_queue_and_heartbeat() -> None:
    conn = StompConnection()
    conn.send(Frame("RECEIPT", [("receipt-id", "1")]))
    conn.send_heartbeat()
    assert conn.data_to_send() == b"RECEIPT\nreceipt-id:1\n\n\x00\n\n"
    assert conn.data_to_send() == b""


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.sampled_from(["1.1", "1.2"]), _text)
def test_escape_round_trip(version: str, text: str) -> None:
    if version == "1.1":
        text = text.replace("\r", "")  # 1.1 has no \r escape: a raw CR would end the line
    assert unescape(escape(text, version), version) == text


@given(st.sampled_from(["1.1", "1.2"]),
       st.lists(st.tuples(_text.filter(lambda s: s != "content-length" and "\r" not in s),
                          _text.filter(lambda s: "\r" not in s)), max_size=5),
       st.binary(max_size=50))
def test_frame_round_trip(version: str, headers: list[tuple[str, str]], body: bytes) -> None:
    conn = StompConnection()
    conn.version = version
    (frame,) = conn.receive_data(serialize(Frame("MESSAGE", headers, body), version))
    expected = headers + ([("content-length", str(len(body)))] if body else [])
    assert frame.headers == expected
    assert frame.body == body


# --- mapping ----------------------------------------------------------------------------------------------


def test_properties_from_send_headers_as_rabbitmq() -> None:
    headers = first_headers([("destination", "/queue/q"), ("content-type", "text/plain"), ("custom", "v1"),
                             ("persistent", "true"), ("priority", "5"), ("timestamp", "1700000000"),
                             ("amqp-message-id", "m1"), ("receipt", "r"), ("reply-to", "/queue/rq")])
    assert properties_from_headers(headers) == {
        "content_type": "text/plain", "reply_to": "/queue/rq", "message_id": "m1", "priority": 5,
        "timestamp": 1700000000, "delivery_mode": 2, "headers": {"receipt": "r", "custom": "v1"}}
    assert list(properties_from_headers(headers)["headers"]) == ["receipt", "custom"]  # reverse frame order


def test_bad_integer_header() -> None:
    with pytest.raises(HeaderError, match="'priority' must be an integer"):
        properties_from_headers({"priority": "high"})


def test_message_headers_from_properties_as_rabbitmq() -> None:
    props = {"content_type": "application/json", "delivery_mode": 2, "priority": 3, "reply_to": "rq2",
             "headers": {"h1": "s", "h2": 5, "h3": True, "h5": {"a": 1}}, "timestamp": 1700000001}
    assert headers_from_properties(props) == [
        ("h1", "s"), ("h2", "5"), ("timestamp", "1700000001"), ("reply-to", "/reply-queue/rq2"), ("priority", "3"),
        ("persistent", "true"), ("content-type", "application/json")]
    assert ("reply-to", "/queue/x") in headers_from_properties({"reply_to": "/queue/x"})
    # 'l' fields too (RabbitMQ 3.10: big:1099511627776 and neg:-5 from pika), not narrower or other types
    table = {"big": LongInt(2**40), "neg": -5, "byte": Int8(1), "dec": 1.5}
    assert headers_from_properties({"headers": table}) == [("big", "1099511627776"), ("neg", "-5")]


@pytest.mark.parametrize(("text", "dest"), [
    ("/queue/a", Destination("queue", "a")),
    ("/queue/a%2Fb", Destination("queue", "a/b")),
    ("/amq/queue/a", Destination("amqqueue", "a")),
    ("/topic/a.b.*", Destination("topic", "a.b.*")),
    ("/exchange/amq.direct", Destination("exchange", "amq.direct")),
    ("/exchange/amq.direct/key", Destination("exchange", "amq.direct", "key")),
    ("/temp-queue/t1", Destination("temp_queue", "t1")),
    ("/reply-queue/amq.gen-x/y", Destination("reply_queue", "amq.gen-x/y")),
])
def test_parse_destination(text: str, dest: Destination) -> None:
    assert parse_destination(text) == dest


@pytest.mark.parametrize(("text", "message", "detail"), [
    ("/foo/bar", "Unknown destination", "'/foo/bar' is not a valid destination.\nValid destination types are: "
     "/temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n"),
    ("plain", "Unknown destination", "'plain' is not a valid destination.\nValid destination types are: "
     "/temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n"),
    ("/queue/", "Invalid destination", "'/' is not a valid queue destination\n"),
    ("/queue", "Invalid destination", "'' is not a valid queue destination\n"),
    ("/queue/a/b", "Invalid destination", "'/a/b' is not a valid queue destination\n"),
    ("/exchange/", "Invalid destination", "'/' is not a valid exchange destination\n"),
    ("/exchange/amq.direct/a/b", "Invalid destination", "'/amq.direct/a/b' is not a valid exchange destination\n"),
    ("/amq/queue/", "Invalid destination", "'/' is not a valid amqqueue destination\n"),
    ("/reply-queue/", "Invalid destination", "'/' is not a valid reply_queue destination\n"),
])
def test_bad_destinations_with_rabbitmq_texts(text: str, message: str, detail: str) -> None:
    with pytest.raises(DestinationError) as info:
        parse_destination(text)
    assert (info.value.message, info.value.detail) == (message, detail)


def test_format_destination() -> None:
    assert format_destination("", "q/1") == "/queue/q%2F1"
    assert format_destination("amq.topic", "a.b") == "/topic/a.b"
    assert format_destination("x", "") == "/exchange/x"
    assert format_destination("x", "k") == "/exchange/x/k"


@pytest.mark.parametrize("path", sorted((Path(leveret.stomp.__file__).parent).glob("*.py")), ids=lambda p: p.name)
def test_stomp_imports_only_the_standard_library(path: Path) -> None:
    """As amqp/ (tests/unit/test_layers.py): the sans-IO protocol package imports nothing beyond the standard
    library (import-linter holds it to the packages it is told of)."""
    outside = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for module in names:
            if module.split(".")[0] not in sys.stdlib_module_names and module != "__future__" \
                    and not module.startswith("leveret.stomp"):
                outside.append(f"line {node.lineno}: {module}")
    assert not outside, f"stomp/{path.name} imports beyond the standard library: {outside}"


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_input_gives_frames_or_one_error_never_an_exception(chunks: list[bytes]) -> None:
    """A fuzzer of the parser: arbitrary bytes, in arbitrary pieces, give frames or set ``error`` once."""
    conn = StompConnection(max_header_bytes=128, max_body=64)
    for chunk in chunks:
        frames = conn.receive_data(chunk)
        assert all(isinstance(frame, Frame) for frame in frames)
        if conn.error is not None:
            assert conn.failed and isinstance(conn.error, FrameError)


@given(st.lists(st.tuples(st.sampled_from(["SEND", "ACK", "MESSAGE"]),
                          st.lists(st.tuples(st.text("abc:\\\n", max_size=5), st.text("xy:\\\n\r", max_size=5)),
                                   max_size=3),
                          st.binary(max_size=20)), min_size=1, max_size=4),
       st.integers(min_value=1, max_value=50))
def test_frames_survive_any_split(frames: list[tuple[str, list[tuple[str, str]], bytes]], step: int) -> None:
    """Serialised frames fed in pieces of any size come back equal (1.2 escaping)."""
    data = b"".join(serialize(Frame(c, [h for h in hs if h[0] != "content-length"], b), "1.2") for c, hs, b in frames)
    conn = StompConnection()
    got: list[Frame] = []
    for start in range(0, len(data), step):
        got += conn.receive_data(data[start:start + step])
    assert conn.error is None
    assert [(f.command, f.body) for f in got] == [(c, b) for c, _, b in frames]
