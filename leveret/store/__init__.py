"""Persistence backends behind one interface (:mod:`leveret.core.storage`).

``BACKENDS`` maps a ``--store`` name to ``"module:Class"``; :func:`open_store` imports the backend only when it
is asked for (so the ``postgresql`` backend needs its driver, psycopg, only when used).
"""

from __future__ import annotations

import importlib
from typing import Any

from leveret.core.storage import Store, StoreError

BACKENDS: dict[str, str] = {
    "memory": "leveret.store.memory:MemoryStore",
    "sqlite": "leveret.store.sqlite:SqliteStore",
    "postgresql": "leveret.store.postgres:PostgresStore",
}


def backend_class(name: str) -> type[Store]:
    """The Store subclass registered as ``name`` (imported now)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise StoreError(f"unknown store {name!r}: use one of {known}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Store)):
        raise StoreError(f"store {name!r} ({target}) is not a Store")
    return cls


def open_store(name: str, **kwargs: Any) -> Store:
    """Create the backend ``name`` with ``kwargs`` (e.g. ``path=`` for sqlite) and open it.

    ``Store.open()`` is idempotent in the bundled backends, so calling it again on the result is harmless.
    """
    store = backend_class(name)(**kwargs)
    store.open()
    return store


__all__ = ["BACKENDS", "Store", "StoreError", "backend_class", "open_store"]
