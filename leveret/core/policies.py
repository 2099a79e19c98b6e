"""RabbitMQ-style policies: settings applied to every queue or exchange whose name matches a pattern,
changeable at run time.

A policy has a name, a vhost, a regular expression (searched in the object's name, as RabbitMQ does), what
it applies to (``queues``, ``exchanges`` or ``all``), a priority (the highest matching policy wins; only
one applies to an object) and a definition: ``message-ttl``, ``expires``, ``max-length``,
``max-length-bytes``, ``overflow``, ``dead-letter-exchange``, ``dead-letter-routing-key``,
``delivery-limit`` and Leveret's ``retry-intervals`` for queues; ``alternate-exchange`` for exchanges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import PreconditionFailed
from .lifecycle import OVERFLOW_MODES

APPLY_TO = ("queues", "exchanges", "all")
_INT_KEYS = {"message-ttl": 0, "expires": 1, "max-length": 0, "max-length-bytes": 0, "delivery-limit": 0}
_STR_KEYS = ("dead-letter-exchange", "dead-letter-routing-key", "alternate-exchange")
KNOWN_KEYS = frozenset({*_INT_KEYS, *_STR_KEYS, "overflow", "retry-intervals"})


@dataclass(frozen=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    definition: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    apply_to: str = "all"

    def matches(self, name: str, kind: str) -> bool:
        """Whether this policy applies to the queue or exchange (``kind``) called ``name``."""
        if self.apply_to not in ("all", kind + "s"):
            return False
        if name.startswith("amq."):
            return False  # RabbitMQ never applies policies to server-named or system objects
        return re.search(self.pattern, name) is not None


def validate_policy(policy: Policy) -> None:
    """Raise PreconditionFailed (with a message saying what is wrong) for an unusable policy."""
    if not policy.name:
        raise PreconditionFailed("a policy needs a name")
    if policy.apply_to not in APPLY_TO:
        raise PreconditionFailed(f"apply-to must be one of {', '.join(APPLY_TO)}, not '{policy.apply_to}'")
    try:
        re.compile(policy.pattern)
    except re.error as exc:
        raise PreconditionFailed(f"pattern '{policy.pattern}' is not a valid regular expression: {exc}") from None
    if not policy.definition:
        raise PreconditionFailed("a policy definition must not be empty")
    for key, value in policy.definition.items():
        if key not in KNOWN_KEYS:
            raise PreconditionFailed(f"unknown policy key '{key}'; known: {', '.join(sorted(KNOWN_KEYS))}")
        if key in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value < _INT_KEYS[key]:
                raise PreconditionFailed(f"policy key '{key}' must be an integer >= {_INT_KEYS[key]}, not {value!r}")
        elif key in _STR_KEYS:
            if not isinstance(value, str):
                raise PreconditionFailed(f"policy key '{key}' must be a string, not {value!r}")
        elif key == "overflow":
            if value not in OVERFLOW_MODES:
                raise PreconditionFailed(f"overflow must be one of {', '.join(OVERFLOW_MODES)}, not {value!r}")
        elif key == "retry-intervals" and (not isinstance(value, list) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
            raise PreconditionFailed("retry-intervals must be a non-empty list of milliseconds")


def effective(policies: dict[str, Policy], name: str, kind: str) -> Policy | None:
    """The policy that applies to an object: the matching one with the highest priority (ties: by name)."""
    best: Policy | None = None
    for policy in policies.values():
        if policy.matches(name, kind) and (best is None or (policy.priority, policy.name) > (best.priority,
                                                                                              best.name)):
            best = policy
    return best
