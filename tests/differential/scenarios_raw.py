"""Differential scenarios on a raw socket, for what no client library sends: update-secret, channel.flow, methods
on unopened channels, malformed frames, the start and tune of the handshake. Registered as "raw/<name>" and run
against RabbitMQ and Leveret by ``test_scenarios.py``; each records the methods the server answered."""

from __future__ import annotations

import struct
from typing import Any

from leveret.amqp import spec

from harness import Run, area
from rawamqp import RawClient

scenario = area("raw")


def reply(client: RawClient, *, full_text: bool = True) -> tuple[Any, ...]:
    """The next method; for a close, its code, class and method ids and the text (or only its reply name)."""
    method = client.recv_method(timeout=2)
    assert method is not None, "the server closed the socket without a method"
    channel, name, args = method
    if name in ("connection.close", "channel.close"):
        code, text, class_id, method_id = args
        return channel, name, code, text if full_text else text.split(" - ")[0], class_id, method_id
    return channel, name, args


@scenario
def raw_update_secret(run: Run) -> None:
    client = run.raw()
    client.send_method(0, "connection.update-secret", b"guest", "refresh")
    run.record(*reply(client))


@scenario
def raw_channel_flow_and_close(run: Run) -> None:
    client = run.raw()
    client.send_method(1, "channel.flow", True)
    run.record(*reply(client))
    client.send_method(1, "channel.close", 200, "bye", 0, 0)
    run.record(*reply(client))
    client.send_method(0, "connection.close", 200, "bye", 0, 0)
    run.record(*reply(client))


@scenario
def raw_method_on_unopened_channel(run: Run) -> None:
    client = run.raw()
    client.send_method(5, "queue.declare", 0, "q", False, False, False, False, False, {})
    run.record(*reply(client, full_text=False))


@scenario
def raw_second_channel_open(run: Run) -> None:
    client = run.raw()
    client.send_method(1, "channel.open", "")
    run.record(*reply(client, full_text=False))


@scenario
def raw_body_frame_without_header(run: Run) -> None:
    client = run.raw()
    client.send(struct.pack(">BHI", 3, 1, 3) + b"abc\xce")
    run.record(*reply(client, full_text=False))


@scenario
def raw_bad_frame_end(run: Run) -> None:
    client = run.raw()
    client.send(struct.pack(">BHIHH", 1, 1, 4, 20, 40) + b"\x00")
    run.record(*reply(client, full_text=False))


@scenario
def raw_unknown_frame_type(run: Run) -> None:
    client = run.raw()
    client.send(struct.pack(">BHI", 9, 0, 0) + b"\xce")
    run.record(*reply(client, full_text=False))


@scenario
def raw_start_and_tune(run: Run) -> None:
    """connection.start (version, mechanisms, locales, capabilities) and connection.tune."""
    client = run.raw(handshake=False)
    client.send(spec.PROTOCOL_HEADER)
    start = client.recv_method()
    assert start is not None
    major, minor, server, mechanisms, locales = start[2]
    client.send_method(0, "connection.start-ok", {}, "PLAIN", b"\0guest\0guest", "en_US")
    run.record(major, minor, mechanisms, locales, sorted(server["capabilities"].items()))
    run.record(client.recv_method())
