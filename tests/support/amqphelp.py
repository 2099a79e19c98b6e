"""Small helpers shared by the pika-based behaviour tests (the `conn` fixture itself is in conftest.py)."""

from __future__ import annotations

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
