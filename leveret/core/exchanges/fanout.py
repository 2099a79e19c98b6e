"""``fanout``: routes to every bound destination, kept as one precomputed tuple."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import ClassVar

from .base import Binding, BindingKey, Exchange, Table, count_down, count_up


class FanoutExchange(Exchange):
    """Routes to every bound destination. Routing key and binding arguments are ignored."""

    type_name: ClassVar[str] = "fanout"

    def _new_index(self) -> None:
        self._counts: dict[Hashable, int] = {}
        self._route: tuple[Hashable, ...] | None = ()

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        found = self._route
        if found is None:
            found = self._route = tuple(self._counts)
        return found

    def _index_add(self, key: BindingKey, binding: Binding) -> None:
        if count_up(self._counts, binding.destination):
            self._route = None

    def _index_remove(self, key: BindingKey, binding: Binding) -> None:
        if count_down(self._counts, binding.destination):
            self._route = None
