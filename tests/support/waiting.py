"""Waiting in tests, in one place: poll for a condition with a deadline instead of sleeping a fixed time.

- ``wait_for(predicate, timeout)``: call ``predicate`` until it returns something truthy and return that; fail
  with ``message`` (or the predicate's name) at the deadline. A deadline is a bound on a failure, never a claim on
  speed: on a loaded machine the wait simply takes longer.
- ``poll(fetch, done, timeout)``: call ``fetch`` until ``done(value)`` or the deadline and return the last value
  either way (for transcripts that record what was seen, and for assertions with a better message).
- ``async_wait_for``: the same for asyncio tests (the event loop keeps running between polls).
- ``hold(seconds, why)``: a bounded wait where the behaviour under test is that time passes, or that something
  does NOT happen within it (a message must not arrive, a lease must run out). ``why`` says which; it is the only
  fixed sleep the suite uses, so a grep for ``hold(`` finds every one of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.01


def poll(fetch: Callable[[], T], done: Callable[[T], object] = bool, timeout: float = 10.0,
         interval: float = INTERVAL) -> T:
    """``fetch()`` every ``interval`` seconds until ``done`` of its value is true or ``timeout`` seconds passed;
    the last value either way."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(interval)
        value = fetch()
    return value


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, message: str = "",
             interval: float = INTERVAL) -> T:
    """The first truthy value of ``predicate()``, polled every ``interval`` seconds; AssertionError after
    ``timeout`` seconds."""
    value = poll(predicate, bool, timeout, interval)
    if not value:
        raise AssertionError(message or f"{getattr(predicate, '__name__', 'condition')} not true "
                                        f"within {timeout} s (last: {value!r})")
    return value


async def async_wait_for(predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, message: str = "",
                         interval: float = INTERVAL) -> T:
    """As :func:`wait_for` in a coroutine; ``predicate`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"{getattr(predicate, '__name__', 'condition')} not true "
                                            f"within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


def hold(seconds: float, why: str) -> None:
    """Let ``seconds`` pass on purpose: the test is about time passing or about something NOT happening in it
    (``why`` says what; it is there to be read)."""
    assert why, "say why this test waits a fixed time"
    time.sleep(seconds)


async def async_hold(seconds: float, why: str) -> None:
    """:func:`hold` in a coroutine (the event loop runs meanwhile)."""
    assert why, "say why this test waits a fixed time"
    await asyncio.sleep(seconds)
