"""Who is asking and what they may do: HTTP basic authentication against the broker's users, and RabbitMQ's
rules for management tags (``administrator``, ``monitoring``, ``management``, ``policymaker``) per route level.
"""

from __future__ import annotations

import base64
import ipaddress

from aiohttp import web

from leveret.core import errors
from leveret.core.broker import Broker, User
from leveret.management.validation import not_authorised

READ_TAGS = frozenset({"administrator", "monitoring", "management", "policymaker"})
# a route's level: "read"; "vhost": change objects in a vhost the user may use; "policy"; "admin"
LEVELS = ("read", "vhost", "policy", "admin")


def is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def authenticate(broker: Broker, request: web.Request) -> User:
    """The user of the request's ``Authorization: Basic`` header; HTTPFailure 401 otherwise (a refused login is
    audited)."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise not_authorised("Not_Authorized")
    try:
        username, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text
        raise not_authorised("Not_Authorized") from None
    try:
        return broker.authenticate(username, password, is_loopback(request.remote))
    except errors.AccessRefused as exc:
        broker.audit.record("login.refused", by={"via": "http", "address": request.remote},
                            protocol="http", user=username, peer=request.remote, reason=exc.text)
        raise not_authorised(exc.text) from None


def authorise(user: User, level: str, vhost: str | None) -> None:
    """HTTPFailure 401 unless ``user``'s tags allow a route of ``level`` on ``vhost`` (the path's, if any)."""
    tags = set(user.tags)
    if "administrator" in tags:
        return
    if not tags & READ_TAGS:
        raise not_authorised("Not management user")
    if level == "admin" or (level == "policy" and "policymaker" not in tags):
        raise not_authorised("Not administrator user")
    if vhost is not None and vhost not in user.vhosts and (level != "read" or "monitoring" not in tags):
        raise not_authorised("User not authorised to access virtual host")
