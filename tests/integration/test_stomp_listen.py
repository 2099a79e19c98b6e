"""The STOMP listeners: ports from the command line, a busy default port (a warning, no STOMP), a busy port that
was asked for (the start fails), and STOMP off."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

import leveret.server.stomp as stomp_server_module
from leveret.config import Config
from leveret.node import ThreadedServer

from serverproc import LeveretProcess


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_stomp_port_from_the_command_line(tmp_path: Path) -> None:
    proc = LeveretProcess(tmp_path / "data", "--stomp-port", "0")  # over LEVERET_STOMP_PORT=-1 (serverproc's)
    try:
        proc.start()
        assert proc.stomp_port > 0
        with socket.create_connection(("127.0.0.1", proc.stomp_port), timeout=10) as sock:
            sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
            assert sock.recv(10).startswith(b"CONNECTED")
    finally:
        proc.stop()


def test_busy_default_port_is_a_warning(make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    busy = _busy_port()
    port = busy.getsockname()[1]
    monkeypatch.setattr(stomp_server_module, "DEFAULT_STOMP_PORT", port)  # as if RabbitMQ held 61613
    caplog.set_level(logging.WARNING, logger="leveret.server")
    server = ThreadedServer(make_config(stomp_port=port)).start()
    try:
        assert server.stomp_port == -1
        assert server.port > 0  # AMQP is served
        assert any(f"cannot listen for STOMP on 127.0.0.1:{port}" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()
        busy.close()


def test_busy_port_that_was_asked_for_stops_the_start(make_config: Callable[..., Config]) -> None:
    busy = _busy_port()
    port = busy.getsockname()[1]
    server = ThreadedServer(make_config(stomp_port=port))
    try:
        with pytest.raises(OSError, match=f"cannot listen for STOMP on 127.0.0.1:{port}"):
            server.start()
    finally:
        busy.close()
        server.loop.call_soon_threadsafe(server.loop.stop)


def test_stomp_off(make_config: Callable[..., Config]) -> None:
    server = ThreadedServer(make_config(stomp_port=-1)).start()
    try:
        assert server.stomp_port == -1
        assert server.server.stomp.listeners() == []
    finally:
        server.stop()


def test_embedded_test_broker_has_stomp_only_when_asked() -> None:
    from leveret.testing import start_broker

    with start_broker() as quiet:
        assert quiet.stomp_port == -1
    with start_broker(stomp_port=0) as server, socket.create_connection(("127.0.0.1", server.stomp_port),
                                                                          timeout=10) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
        assert sock.recv(10).startswith(b"CONNECTED")
