"""pytest plugin (entry point ``pytest11``: loaded wherever leveret is installed). See docs/testing.md.

Fixtures, each acting only when a test asks for it:

- ``leveret_server`` (session): a :class:`leveret.testing.EmbeddedBroker`, a real Leveret (memory store,
  ephemeral port of 127.0.0.1) started at the first use and stopped at the end of the session.
- ``leveret_broker`` (session): its URL, ``amqp://guest:guest@127.0.0.1:<port>/`` (the default vhost, shared
  by the whole session).
- ``leveret_url`` (per test): the URL of a fresh vhost of that broker, deleted after the test with everything
  in it (its connections are closed), so tests never see each other's queues.
- ``leveret_eager`` (per test): a function ``leveret_eager(app)`` that sets ``app.eager = True`` for the test
  (tasks run inline at send time, no broker) and restores the old value afterwards.

Marker ``@pytest.mark.leveret_eager(app_or_"module:attr", ...)`` does the same for the Apps named (with no
argument: the App named by the ini option ``leveret_app``). Disable the plugin with ``-p no:leveret``.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported lazily: a session that uses no fixture never loads the broker's code
    from leveret.testing import EmbeddedBroker

MARKER = "leveret_eager"
_SWITCHED = pytest.StashKey[list[tuple[Any, bool]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("leveret_app", f"'module:attribute' of the leveret.tasks App that @pytest.mark.{MARKER} "
                                 "without arguments switches to eager mode", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(*apps): run the given leveret.tasks Apps (objects or "
                                       "'module:attr'; default: the ini option leveret_app) in eager mode")


def load_app(spec: Any) -> Any:
    """An App given as itself or as ``"package.module:attribute"``."""
    if not isinstance(spec, str):
        return spec
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise pytest.UsageError(f"{MARKER}: expected 'module:attribute', got {spec!r}")
    return getattr(importlib.import_module(module), attr)


def switch_to_eager(app: Any, switched: list[tuple[Any, bool]]) -> Any:
    if not hasattr(app, "eager"):
        raise pytest.UsageError(f"{app!r} has no eager mode (not a leveret.tasks App, or a leveret without it)")
    switched.append((app, app.eager))
    app.eager = True
    return app


def restore(switched: list[tuple[Any, bool]]) -> None:
    for app, before in reversed(switched):
        app.eager = before
    switched.clear()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return
    specs = list(marker.args) or [item.config.getini("leveret_app")]
    if not specs[0]:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} needs an App argument or the ini option leveret_app")
    switched = item.stash.setdefault(_SWITCHED, [])
    for spec in specs:
        switch_to_eager(load_app(spec), switched)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    switched = item.stash.get(_SWITCHED, None)
    if switched:
        restore(switched)


@pytest.fixture(scope="session")
def leveret_server() -> Iterator[EmbeddedBroker]:
    from leveret.testing import start_broker

    server = start_broker()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def leveret_broker(leveret_server: EmbeddedBroker) -> str:
    return leveret_server.url


@pytest.fixture
def leveret_url(leveret_server: EmbeddedBroker) -> Iterator[str]:
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    url = leveret_server.new_vhost(vhost)
    try:
        yield url
    finally:
        leveret_server.delete_vhost(vhost)


@pytest.fixture
def leveret_eager() -> Iterator[Callable[[Any], Any]]:
    switched: list[tuple[Any, bool]] = []
    yield lambda app: switch_to_eager(load_app(app), switched)
    restore(switched)
