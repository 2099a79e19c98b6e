"""STOMP against RabbitMQ's STOMP plugin: connecting (versions, credentials, virtual hosts, heart-beats) and
what the broker answers to malformed frames. Each scenario runs on Leveret and on RabbitMQ's plugin and the
transcripts must be equal (stompdiff.py says what is recorded and what is normalised)."""

from __future__ import annotations

import pytest
from stompdiff import StompRun, names, run_check, scenario

GUEST = {"login": "guest", "passcode": "guest"}


@scenario
def version_12(run: StompRun) -> None:
    client = run.connect("connected", {"accept-version": "1.2", "host": "/", **GUEST})
    run.bye("disconnect", client)
    run.recv("after disconnect", client)


@scenario
def version_11(run: StompRun) -> None:
    run.bye("disconnect", run.connect("connected", {"accept-version": "1.1", "host": "/", **GUEST}))


@scenario
def version_10_explicit(run: StompRun) -> None:
    run.bye("disconnect", run.connect("connected", {"accept-version": "1.0", "host": "/", **GUEST}))


@scenario
def version_highest_common(run: StompRun) -> None:
    run.bye("disconnect", run.connect("connected", {"accept-version": "1.0,1.1,1.2", "host": "/", **GUEST}))
    run.bye("disconnect 2", run.connect("connected 2", {"accept-version": "1.1,1.0", "host": "/", **GUEST}))


@scenario
def no_accept_version_is_10(run: StompRun) -> None:
    run.bye("disconnect", run.connect("connected", {"host": "/", **GUEST}))


@scenario
def no_host_header(run: StompRun) -> None:
    run.bye("disconnect", run.connect("connected", {"accept-version": "1.2", **GUEST}))


@scenario
def stomp_command(run: StompRun) -> None:
    client = run.connect("connected", {"accept-version": "1.2", "host": "/", **GUEST}, command="STOMP")
    run.bye("disconnect", client)


@scenario
def unsupported_version(run: StompRun) -> None:
    client = run.connect("reply", {"accept-version": "2.0", "host": "/", **GUEST})
    run.quiet("then", client)


@scenario
def bad_password(run: StompRun) -> None:
    client = run.connect("reply", {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "nope"})
    run.bye("afterwards", client)


@scenario
def unknown_user(run: StompRun) -> None:
    client = run.connect("reply", {"accept-version": "1.2", "host": "/", "login": run.name("nobody"),
                                   "passcode": "guest"})
    run.bye("afterwards", client)


@scenario
def no_login(run: StompRun) -> None:
    # RabbitMQ's plugin logs in as its default_user (guest/guest) when CONNECT has no login
    run.bye("disconnect", run.connect("connected", {"accept-version": "1.2", "host": "/"}))


@scenario
def unknown_vhost(run: StompRun) -> None:
    client = run.connect("reply", {"accept-version": "1.2", "host": run.name("vhost"), **GUEST})
    run.bye("afterwards", client)


@scenario
def heart_beat_none_asked(run: StompRun) -> None:
    run.bye("disconnect", run.connect("connected", {"accept-version": "1.2", "host": "/", "heart-beat": "0,0",
                                                    **GUEST}))


@scenario
def heart_beat_negotiated(run: StompRun) -> None:
    # the client can send every 5 s and wants nothing: the server answers 5000,0 (it wants beats, sends none);
    # then the other way round
    run.bye("disconnect", run.connect("connected", {"accept-version": "1.2", "host": "/", "heart-beat": "0,5000",
                                                    **GUEST}))
    run.bye("disconnect 2", run.connect("connected 2", {"accept-version": "1.2", "host": "/",
                                                        "heart-beat": "3000,0", **GUEST}))


@scenario
def heart_beats_sent(run: StompRun) -> None:
    # the client wants a beat every 200 ms: within ~1.5 s of silence the server sends some (RabbitMQ rounds the
    # interval to whole seconds, so it is "at least one", not a count)
    client = run.connect("connected", {"accept-version": "1.2", "host": "/", "heart-beat": "0,200", **GUEST})
    run.quiet("no frame meanwhile", client, 1.5)
    run.record("server beats seen", client.heartbeats >= 1)
    run.bye("disconnect", client)


@scenario
def frame_before_connect(run: StompRun) -> None:
    client = run.stomp()
    run.send(client, "SEND", {"destination": "/queue/x", "receipt": "r"}, b"x")
    run.recv("reply", client)
    run.quiet("then", client)


@scenario
def unknown_command(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "BOGUS", {"id": "1"})
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def bad_escape_in_header(run: StompRun) -> None:
    client = run.connect("connected")
    run.send_raw(client, b"SEND\ndestination:/queue/" + run.queue().encode() + b"\\q\nreceipt:r\n\nx\x00")
    run.recv("reply", client)


@scenario
def header_without_colon(run: StompRun) -> None:
    client = run.connect("connected")
    run.send_raw(client, b"SEND\ndestination:/queue/" + run.queue().encode() + b"\nno-colon\nreceipt:r\n\nx\x00")
    run.recv("reply", client)


@scenario
def missing_nul_then_next_frame(run: StompRun) -> None:
    # a body with content-length whose NUL is not where it must be
    client = run.connect("connected")
    queue = run.queue()
    run.send_raw(client, f"SEND\ndestination:/queue/{queue}\ncontent-length:2\nreceipt:r\n\nabcd\x00".encode())
    run.recv("reply", client)


@scenario
def send_without_destination(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SEND", {"receipt": "r"}, b"x")
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def subscribe_without_destination(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SUBSCRIBE", {"id": "s", "receipt": "r"})
    run.recv("reply", client)
    run.bye("afterwards", client)


@scenario
def oversized_header(run: StompRun) -> None:
    client = run.connect("connected")
    run.send(client, "SEND", {"destination": f"/queue/{run.queue()}", "receipt": "r", "x-big": "v" * 200_000},
             b"x")
    run.recv("reply", client)
    run.bye("afterwards", client)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", names(__name__))
def test_stomp_connect(name: str, stomp_broker: tuple[int, int]) -> None:
    run_check(name, stomp_broker)
