"""One way for Leveret's own clients (task App, worker, scheduler, outbox forwarder, tap) to open an aio-pika
connection."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aio_pika
import aio_pika.abc


async def open_connection(url: str, timeout: float = 10.0) -> aio_pika.abc.AbstractConnection:
    """``aio_pika.connect(url)``, but a connection that fails to open is closed: aio_pika.connect drops it, and
    its ``__del__`` then leaves a ``Connection.close`` coroutine that is never awaited (a RuntimeWarning)."""
    conn = aio_pika.Connection(aio_pika.connection.make_url(url))
    try:
        await conn.connect(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
        raise
    return conn


def server_product(connection: Any) -> str:
    """The ``product`` server property of an aio-pika (or aiormq) connection: "Leveret", "RabbitMQ", ...

    aio-pika >= 9 keeps the server properties on the aiormq connection (``connection.transport.connection``)."""
    props: Any = None
    for holder in (getattr(getattr(connection, "transport", None), "connection", None),
                   getattr(connection, "transport", None), connection):
        props = getattr(holder, "server_properties", None)
        if props:
            break
    product = (props or {}).get("product", "")
    return product.decode() if isinstance(product, bytes) else str(product)
