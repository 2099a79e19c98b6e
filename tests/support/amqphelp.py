"""Small helpers shared by the pika-based behaviour tests (the `conn` fixture itself is in conftest.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingConnection


def connect(port: int) -> BlockingConnection:
    """A pika connection to the broker on 127.0.0.1:``port`` (one attempt: a failure is a failure)."""
    return BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1))


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def closed_with(exc_info: pytest.ExceptionInfo[Any]) -> tuple[int, str]:
    """The (reply code, reply text) of a ChannelClosedByBroker or ConnectionClosedByBroker."""
    return exc_info.value.reply_code, exc_info.value.reply_text


def drain(port: int, queue: str) -> list[tuple[Any, bytes]]:
    """Every message of ``queue`` (taken), as (properties, body)."""
    conn = connect(port)
    try:
        ch = conn.channel()
        got = []
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append((props, body))
    finally:
        conn.close()


def delete_queues(port: int, *names: str) -> None:
    """Delete ``names`` if they exist (test clean-up: errors are ignored)."""
    try:
        conn = connect(port)
    except Exception:
        return
    try:
        for name in names:
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)
    finally:
        if conn.is_open:
            conn.close()
