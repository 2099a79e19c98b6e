"""``topic``: routing by dot-separated patterns with ``*`` and ``#``, through a trie of binding-key words as
RabbitMQ's ``rabbit_exchange_type_topic`` keeps it, walked as a set of states word by word, plus a bounded
cache (routing key -> destinations) cleared on bind/unbind. ``topic_matches`` is a reference matcher for one
pattern and one key.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable
from typing import ClassVar

from .base import NO_DESTINATIONS, Binding, BindingKey, Exchange, Table, count_down, count_up

TOPIC_CACHE_SIZE = 4096
"""How many routing keys a topic exchange remembers the destinations of."""


def _split_topic_key(key: str) -> list[str]:
    """Words of a routing or binding key, as RabbitMQ's split_topic_key: "" has no words, "a." is a, ""."""
    return key.split(".") if key else []


class _TrieNode:
    """One node of the binding-key trie. ``star`` and ``hash`` are the children for the words * and #."""

    __slots__ = ("children", "destinations", "hash", "is_hash", "star")

    def __init__(self, is_hash: bool) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.star: _TrieNode | None = None
        self.hash: _TrieNode | None = None
        self.is_hash = is_hash  # reached through a # word: may swallow any number of further words
        self.destinations: dict[Hashable, int] = {}  # bindings ending here: destination -> count

    def child(self, word: str) -> _TrieNode | None:
        if word == "*":
            return self.star
        if word == "#":
            return self.hash
        return self.children.get(word)

    def add_child(self, word: str) -> _TrieNode:
        node = self.child(word)
        if node is not None:
            return node
        node = _TrieNode(is_hash=word == "#")
        if word == "*":
            self.star = node
        elif word == "#":
            self.hash = node
        else:
            self.children[word] = node
        return node

    def remove_child(self, word: str) -> None:
        if word == "*":
            self.star = None
        elif word == "#":
            self.hash = None
        else:
            del self.children[word]

    def is_empty(self) -> bool:
        return not (self.destinations or self.children or self.star or self.hash)


def _enter(states: dict[_TrieNode, None], node: _TrieNode | None) -> None:
    """Add ``node`` to ``states`` with the nodes reachable from it through # words matching nothing."""
    while node is not None and node not in states:
        states[node] = None
        node = node.hash


class TopicExchange(Exchange):
    """Routes by pattern: a binding key is dot-separated words where ``*`` matches exactly one word and
    ``#`` zero or more. Words may be empty ("a..b" is a, "", b) and the empty key has no words, so binding
    "#" matches routing key "" while "*" does not. Binding arguments are ignored.

    The destinations of the last ``TOPIC_CACHE_SIZE`` routing keys seen are cached; any bind or unbind
    clears the cache.
    """

    type_name: ClassVar[str] = "topic"
    cache_size: ClassVar[int] = TOPIC_CACHE_SIZE

    def _new_index(self) -> None:
        self._root = _TrieNode(is_hash=False)
        self._cache: dict[str, tuple[Hashable, ...]] = {}

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        found = self._cache.get(routing_key)
        if found is not None:
            return found
        found = self._match(routing_key)
        cache = self._cache
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]  # the oldest entry
        cache[routing_key] = found
        return found

    def _match(self, routing_key: str) -> tuple[Hashable, ...]:
        states: dict[_TrieNode, None] = {}
        _enter(states, self._root)
        for word in _split_topic_key(routing_key):
            following: dict[_TrieNode, None] = {}
            for node in states:
                if node.is_hash:
                    _enter(following, node)
                child = node.children.get(word)
                if child is not None:
                    _enter(following, child)
                if node.star is not None:
                    _enter(following, node.star)
            if not following:
                return NO_DESTINATIONS
            states = following
        found: dict[Hashable, None] = {}
        for node in states:
            if node.destinations:
                found.update(dict.fromkeys(node.destinations))
        return tuple(found)

    def _index_add(self, key: BindingKey, binding: Binding) -> None:
        node = self._root
        for word in _split_topic_key(binding.routing_key):
            node = node.add_child(word)
        if count_up(node.destinations, binding.destination):
            self._cache.clear()

    def _index_remove(self, key: BindingKey, binding: Binding) -> None:
        path: list[tuple[_TrieNode, str]] = []
        node = self._root
        for word in _split_topic_key(binding.routing_key):
            path.append((node, word))
            following = node.child(word)
            assert following is not None, "a bound key is always in the trie"
            node = following
        if not count_down(node.destinations, binding.destination):
            return
        self._cache.clear()
        for parent, word in reversed(path):
            if not node.is_empty():
                break
            parent.remove_child(word)
            node = parent


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether topic binding key ``pattern`` matches ``routing_key`` (a reference for one pair; exchanges
    use their trie). Same word rules as TopicExchange."""
    words = _split_topic_key(pattern)
    end = len(words)

    def closure(positions: Iterable[int]) -> set[int]:
        reached: set[int] = set()
        for position in positions:
            while position not in reached:
                reached.add(position)
                if position == end or words[position] != "#":
                    break
                position += 1
        return reached

    states = closure([0])
    for word in _split_topic_key(routing_key):
        following: list[int] = []
        for position in states:
            if position == end:
                continue
            expected = words[position]
            if expected == "#":
                following.append(position)
            elif expected in ("*", word):
                following.append(position + 1)
        if not following:
            return False
        states = closure(following)
    return end in states
