"""One way for Leveret's own clients (task App, worker, scheduler, outbox forwarder, tap) to open an aio-pika
connection, to one broker or the first reachable of several (client-side failover, docs/cluster.md)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import aio_pika
import aio_pika.abc

# a list of URLs in one string: separated by "," or ";" (kombu's), each starting with a scheme
_SEPARATOR = re.compile(r"\s*[,;]\s*(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)
_last_good: dict[tuple[str, ...], int] = {}  # a list of URLs -> the index of the one that last opened


def broker_urls(urls: str | Sequence[str]) -> list[str]:
    """``"amqp://a/,amqp://b/"`` (or ``;``), ``["amqp://a/", "amqp://b/"]`` -> the list of URLs, in order."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out = [part for item in items for part in _SEPARATOR.split(item.strip()) if part]
    if not out:
        raise ValueError("no broker URL")
    return out


def join_urls(urls: str | Sequence[str]) -> str:
    """The one-string form of several URLs (comma-separated), which :func:`open_connection` takes too."""
    return ",".join(broker_urls(urls))


async def open_connection(url: str | Sequence[str], timeout: float = 10.0) -> aio_pika.abc.AbstractConnection:
    """A connection to ``url``, or to the first that opens of several (a list, or one string of URLs separated
    by commas): tried in order, starting with the one that opened last time (each with ``timeout``); when none
    does, the last one's error is raised (with the others' as notes). Retrying with back-off is the caller's
    (every Leveret client has its loop), so an outage of the first broker costs one refused connection per
    attempt and the client goes on with the next."""
    urls = broker_urls(url)
    if len(urls) == 1:
        return await _open_one(urls[0], timeout)
    key = tuple(urls)
    first = _last_good.get(key, 0)
    errors: list[str] = []
    for step in range(len(urls)):
        index = (first + step) % len(urls)
        try:
            conn = await _open_one(urls[index], timeout)
        except Exception as exc:
            if step == len(urls) - 1:
                for note in errors:
                    exc.add_note(note)
                raise
            errors.append(f"{_safe(urls[index])}: {type(exc).__name__}: {exc}")
            continue
        _last_good[key] = index
        return conn
    raise AssertionError("unreachable")  # pragma: no cover


def _safe(url: str) -> str:
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


async def _open_one(url: str, timeout: float) -> aio_pika.abc.AbstractConnection:
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
