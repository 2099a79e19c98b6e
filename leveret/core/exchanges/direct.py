"""``direct``: routes on the exact routing key, indexed as binding key -> destinations."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import ClassVar

from .base import NO_DESTINATIONS, Binding, BindingKey, Exchange, Table, count_down, count_up


class DirectExchange(Exchange):
    """Routes to the destinations whose binding key equals the routing key. Binding arguments are ignored."""

    type_name: ClassVar[str] = "direct"

    def _new_index(self) -> None:
        self._counts: dict[str, dict[Hashable, int]] = {}  # binding key -> destination -> number of bindings
        self._routes: dict[str, tuple[Hashable, ...]] = {}  # binding key -> destinations, built on demand

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        found = self._routes.get(routing_key)
        if found is not None:
            return found
        counts = self._counts.get(routing_key)
        if counts is None:
            return NO_DESTINATIONS
        found = self._routes[routing_key] = tuple(counts)
        return found

    def _index_add(self, key: BindingKey, binding: Binding) -> None:
        counts = self._counts.setdefault(binding.routing_key, {})
        if count_up(counts, binding.destination):
            self._routes.pop(binding.routing_key, None)

    def _index_remove(self, key: BindingKey, binding: Binding) -> None:
        counts = self._counts[binding.routing_key]
        if count_down(counts, binding.destination):
            self._routes.pop(binding.routing_key, None)
            if not counts:
                del self._counts[binding.routing_key]
