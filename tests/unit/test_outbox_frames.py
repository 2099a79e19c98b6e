"""The forwarder's batch publisher builds the wire frames itself from the properties the outbox stored: they
must be byte for byte what pamqp (aiormq's framing) would send."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pamqp.frame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from leveret.outbox.frames import Publisher as _Publisher
from leveret.outbox.frames import message_id_of
from leveret.outbox.message import OutboxMessage, decode_properties, encode_properties


def expected(row: OutboxMessage, channel: int, max_body: int) -> bytes:
    props = decode_properties(row.header)
    frames = [pamqp.frame.marshal(spec.Basic.Publish(exchange=row.exchange, routing_key=row.routing_key,
                                                     mandatory=row.mandatory), channel),
              pamqp.frame.marshal(ContentHeader(0, len(row.body), props), channel)]
    frames += [pamqp.frame.marshal(ContentBody(row.body[i:i + max_body]), channel)
               for i in range(0, len(row.body), max_body)]
    return b"".join(frames)


def test_frames_are_what_pamqp_marshals() -> None:
    publisher = _Publisher(cast(Any, SimpleNamespace(number=3, max_content_size=10)))
    for props, body, mandatory in (({}, b"", True), ({"headers": {"k": b"\x01", "n": 5}, "priority": 7}, b"x" * 25,
                                                      False), ({"content_type": "text/plain"}, b"0123456789", True)):
        header, message_id = encode_properties(props)
        row = OutboxMessage(1, "ex", "rk", mandatory, header, body)
        frames, got_id = publisher.frames(row)
        assert frames == expected(row, 3, 10)
        assert got_id == message_id


def test_message_id_is_read_from_the_wire_form() -> None:
    for props in ({}, {"content_type": "a/b", "content_encoding": "gzip", "headers": {"k": [1, "x", b"\x00"]},
                       "delivery_mode": 1, "priority": 3, "correlation_id": "c", "reply_to": "r",
                       "expiration": "10", "message_id": "mine", "timestamp": 5, "type": "t"},
                  {"headers": {}, "message_id": "é"}, {"reply_to": "r"}):
        header, message_id = encode_properties(props)
        assert message_id_of(header) == message_id == decode_properties(header).message_id


def _sent_properties(frames: bytes) -> Any:
    """The properties of the content header frame among ``frames`` (method frame first)."""
    size = int.from_bytes(frames[3:7], "big")
    _, _, header = pamqp.frame.unmarshal(frames[8 + size:])
    return header.properties


def test_the_deduplication_id_is_added_to_rows_saved_without_it_and_the_notice_queue_is_filled_in() -> None:
    publisher = _Publisher(cast(Any, SimpleNamespace(number=1, max_content_size=100)))
    old = spec.Basic.Properties(message_id="m-old", delivery_mode=2)  # a row saved before the header existed
    row = OutboxMessage(1, "", "q", True, old.marshal(), b"x")
    assert _sent_properties(publisher.frames(row)[0]).headers == {"x-deduplication-header": "m-old"}
    header, message_id = encode_properties({"headers": {"k": 1}}, track=True)
    tracked = OutboxMessage(2, "", "q", True, header, b"y")
    assert decode_properties(header).headers == {"x-deduplication-header": message_id, "k": 1,
                                                 "x-leveret-notify": ""}
    assert _sent_properties(publisher.frames(tracked)[0]).headers == {"x-deduplication-header": message_id, "k": 1}
    publisher.notify = "leveret.outbox.notices.abc"
    assert _sent_properties(publisher.frames(tracked)[0]).headers == {
        "x-deduplication-header": message_id, "k": 1, "x-leveret-notify": "leveret.outbox.notices.abc"}
