"""Domain errors of the broker core.

The core raises these; each adapter translates them exactly once (AMQP: leveret.server.amqp maps them to
channel or connection close with a reply code; HTTP: to a status). ``text`` is what a person reads.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of all domain errors. ``text`` says what was wrong in RabbitMQ's words where it has them."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class NotFound(BrokerError):
    """The named exchange, queue, vhost or binding does not exist."""


class AccessRefused(BrokerError):
    """The operation is not permitted (reserved names, permissions, exclusive consumers, bad login)."""


class PermissionRefused(AccessRefused):
    """A user's configure/write/read pattern does not allow the operation (AMQP: 403 like any AccessRefused;
    the management API answers 401 ``Access refused.`` as RabbitMQ's does)."""


class ResourceLocked(BrokerError):
    """An exclusive queue owned by another connection."""


class PreconditionFailed(BrokerError):
    """Inequivalent re-declaration, unknown delivery tag, queue in use or not empty, bad arguments."""


class NotAllowed(BrokerError):
    """A connection-level refusal: unknown vhost, vhost access, reused consumer tag, limits."""


class NotImplementedFeature(BrokerError):
    """Something the protocol has but Leveret (like RabbitMQ) does not do, such as immediate=true."""


class CommandInvalid(BrokerError):
    """A command that makes no sense here, such as an unknown exchange type."""


class ResourceError(BrokerError):
    """The broker ran out of a resource it needs for the operation."""


class InternalError(BrokerError):
    """A bug or an unexpected failure; the connection is closed with 541."""
