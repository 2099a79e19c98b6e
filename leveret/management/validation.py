"""Checking what a request body asks for: the API's refusals (:class:`HTTPFailure`) and the validators of body
fields shared by the management API's handlers, the definitions import and the control socket (``leveret ctl``),
so the three cannot accept different things. No aiohttp here: only the standard library and the core.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from leveret.core.broker import User
from leveret.core.passwords import hash_password
from leveret.core.policies import Policy

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


class HTTPFailure(Exception):
    """An HTTP-level refusal raised by the API itself (bad body, not authorised, unknown path)."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def bad_request(reason: str) -> HTTPFailure:
    return HTTPFailure(400, "bad_request", reason)


def not_authorised(reason: str) -> HTTPFailure:
    return HTTPFailure(401, "not_authorised", reason)


def exchange_name(name: str) -> str:
    """The exchange a URL names: ``amq.default`` is the default exchange (``""``), as in RabbitMQ's API."""
    return "" if name == "amq.default" else name


def parse_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if isinstance(value, str):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise bad_request(f"'{key}' must be true or false")
    return value


def parse_dict(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise bad_request(f"'{key}' must be a JSON object")
    return value


def parse_tags(value: Any) -> tuple[str, ...]:
    """User tags given as ``"a,b"`` or ``["a", "b"]``."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(t.strip() for t in value if t.strip())
    raise bad_request("'tags' must be a comma-separated string or a list of strings")


def password_hash_of(body: dict[str, Any], existing: User | None) -> str:
    """The password hash a user PUT or a definitions entry asks for: ``password`` (hashed here) or
    ``password_hash`` (RabbitMQ's sha256 format, stored as given); neither keeps an existing user's."""
    algorithm = body.get("hashing_algorithm", HASHING_ALGORITHM)
    if algorithm != HASHING_ALGORITHM:
        raise bad_request(f"unsupported hashing_algorithm '{algorithm}'; only {HASHING_ALGORITHM} is supported")
    if "password" in body:
        if not isinstance(body["password"], str):
            raise bad_request("'password' must be a string")
        if not body["password"]:
            raise bad_request("'password' must not be empty (a blank password never logs in; "
                              "\"password_hash\": \"\" makes a user without password login)")
        return hash_password(body["password"])
    if "password_hash" in body:
        value = body["password_hash"]
        if not isinstance(value, str):
            raise bad_request("'password_hash' must be a string")
        if value:
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:  # binascii.Error, or a str that is not ASCII
                raise bad_request("'password_hash' is not base64") from None
            if len(raw) != 36:
                raise bad_request("'password_hash' is not a rabbit_password_hashing_sha256 hash")
        return value
    if existing is not None:
        return existing.password_hash
    raise bad_request("a new user needs 'password' or 'password_hash'")


def permission_patterns(body: dict[str, Any]) -> tuple[str, str, str]:
    """The configure, write and read regular expressions of a permissions body (``.*`` where absent)."""
    patterns = []
    for key in ("configure", "write", "read"):
        value = body.get(key, ".*")
        if not isinstance(value, str):
            raise bad_request(f"'{key}' must be a regular expression")
        try:
            re.compile(value)
        except re.error as exc:
            raise bad_request(f"'{key}' is not a valid regular expression: {exc}") from None
        patterns.append(value)
    return patterns[0], patterns[1], patterns[2]


def policy_from(body: dict[str, Any], vhost: str, name: str) -> Policy:
    """The policy a policy PUT or a definitions entry describes (``apply-to`` or ``apply_to``)."""
    pattern = body.get("pattern")
    if not isinstance(pattern, str):
        raise bad_request("'pattern' is required")
    definition = body.get("definition")
    if not isinstance(definition, dict):
        raise bad_request("'definition' must be a JSON object")
    priority = body.get("priority", 0)
    if isinstance(priority, str) and priority.lstrip("-").isdigit():
        priority = int(priority)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise bad_request("'priority' must be an integer")
    apply_to = body.get("apply-to", body.get("apply_to", "all"))
    if not isinstance(apply_to, str):
        raise bad_request("'apply-to' must be queues, exchanges or all")
    return Policy(vhost, name, pattern, dict(definition), priority, apply_to)
