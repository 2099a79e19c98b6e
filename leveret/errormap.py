"""The one table from core errors to what the management API and the control socket answer.

Each core error class (:mod:`leveret.core.errors`) becomes an HTTP status, RabbitMQ's ``error`` word, and the
reason a person reads (the error's own text, unless the table gives RabbitMQ's fixed one). The HTTP API
(``leveret/http/api/app.py``) answers ``{"error": ..., "reason": ...}`` with the status; the control socket
(``leveret/server/control.py``) answers ``{"ok": false, "status": ..., "error": reason}``. The AMQP adapter has
its own table of reply codes (``leveret/server/amqp.py``), since AMQP's codes are not HTTP's.

Depends on the standard library and ``leveret.core.errors`` only, so either adapter may import it.
"""

from __future__ import annotations

from typing import NamedTuple

from leveret.core import errors


class Refusal(NamedTuple):
    """How a core error is answered: HTTP ``status``, RabbitMQ's ``error`` word, the ``reason`` text."""

    status: int
    error: str
    reason: str


# class -> (status, error, fixed reason or None for the error's own text); a class not here is a bug: 500
TABLE: dict[type[errors.BrokerError], tuple[int, str, str | None]] = {
    errors.NotFound: (404, "Object Not Found", None),
    errors.PreconditionFailed: (400, "bad_request", None),
    errors.CommandInvalid: (400, "bad_request", None),
    errors.NotAllowed: (400, "bad_request", None),
    errors.NotImplementedFeature: (400, "bad_request", None),
    errors.AccessRefused: (403, "access_refused", None),
    errors.PermissionRefused: (401, "not_authorised", "Access refused."),  # as RabbitMQ's management API
    errors.ResourceLocked: (409, "resource_locked", None),
}
INTERNAL = (500, "internal_error", None)


def refusal(exc: errors.BrokerError) -> Refusal:
    """The answer to ``exc``, looked up by its exact class (a subclass has its own row or is internal)."""
    status, error, reason = TABLE.get(type(exc), INTERNAL)
    return Refusal(status, error, exc.text if reason is None else reason)
