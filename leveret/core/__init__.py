"""The broker core: vhosts, exchanges, queues, channels and sessions, synchronous and frame-free.

The public names are importable from here (``from leveret.core import Broker, ManualTimers``); they are loaded
on first use (PEP 562), so that importing a leaf module such as ``leveret.core.message`` or
``leveret.core.errors`` does not load the whole core (and a module the core imports may import those leaves).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .broker import Broker
    from .channel import Channel, Sink
    from .errors import (
        AccessRefused,
        BrokerError,
        CommandInvalid,
        InternalError,
        NotAllowed,
        NotFound,
        NotImplementedFeature,
        PermissionRefused,
        PreconditionFailed,
        ResourceError,
        ResourceLocked,
    )
    from .message import Message
    from .queue import Consumer, Queue
    from .session import Session
    from .timers import ManualTimers, SystemTimers, Timers
    from .vhost import VHost

_WHERE = {
    "Broker": "broker",
    "Channel": "channel",
    "Sink": "channel",
    "Message": "message",
    "Consumer": "queue",
    "Queue": "queue",
    "Session": "session",
    "ManualTimers": "timers",
    "SystemTimers": "timers",
    "Timers": "timers",
    "VHost": "vhost",
    **dict.fromkeys(("AccessRefused", "BrokerError", "CommandInvalid", "InternalError", "NotAllowed", "NotFound",
                     "NotImplementedFeature", "PermissionRefused", "PreconditionFailed", "ResourceError",
                     "ResourceLocked"), "errors"),
}

__all__ = [
    "AccessRefused",
    "Broker",
    "BrokerError",
    "Channel",
    "CommandInvalid",
    "Consumer",
    "InternalError",
    "ManualTimers",
    "Message",
    "NotAllowed",
    "NotFound",
    "NotImplementedFeature",
    "PermissionRefused",
    "PreconditionFailed",
    "Queue",
    "ResourceError",
    "ResourceLocked",
    "Session",
    "Sink",
    "SystemTimers",
    "Timers",
    "VHost",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'leveret.core' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
