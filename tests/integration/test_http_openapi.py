"""The OpenAPI description of the management API (``GET /api/openapi.json``): it lists exactly the registered
routes, and a schemathesis fuzz of a real Leveret against it finds no 5xx, no undocumented status, content type
or response shape, and no operation that answers without credentials.

The fuzz is bounded (a few examples per operation, derandomised) so that it runs in seconds;
``LEVERET_FUZZ_EXAMPLES=200`` runs a deeper one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from leveret.config import Config
from leveret.http import openapi
from leveret.node import ThreadedServer

from httphelp import Client

FUZZ_USER = ("openapi-fuzzer", "fuzz-secret")  # an administrator the fuzz is unlikely to delete by chance
MAX_EXAMPLES = int(os.environ.get("LEVERET_FUZZ_EXAMPLES", "8"))  # more for a deeper run by hand


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    data = tmp_path_factory.mktemp("openapi")
    srv = ThreadedServer(Config(port=0, http_port=0, data_dir=str(Path(data) / "data"), log_level="error")).start()
    admin = Client(srv.http_port)
    admin.ok("PUT", f"/api/users/{FUZZ_USER[0]}", {"password": FUZZ_USER[1], "tags": "administrator"})
    admin.ok("PUT", f"/api/permissions/%2F/{FUZZ_USER[0]}", {})
    admin.ok("PUT", "/api/exchanges/%2F/fuzz-x", {"type": "direct"})
    admin.ok("PUT", "/api/queues/%2F/fuzz-q", {"durable": True})
    admin.ok("POST", "/api/bindings/%2F/e/fuzz-x/q/fuzz-q", {"routing_key": ""})
    admin.ok("POST", "/api/exchanges/%2F/fuzz-x/publish", {"routing_key": "", "payload": "first"})
    admin.ok("PUT", "/api/vhosts/fuzz-vhost", {})
    admin.ok("PUT", "/api/users/fuzz-user", {"password": "pw", "tags": "management"})
    admin.ok("PUT", "/api/permissions/%2F/fuzz-user", {})
    admin.ok("PUT", "/api/policies/%2F/fuzz-p", {"pattern": "^fuzz", "definition": {"max-length": 100}})
    try:
        yield srv
    finally:
        srv.stop()


def test_every_registered_route_is_described_and_nothing_else(server: ThreadedServer) -> None:
    described = Client(server.http_port).get("/api/openapi.json")
    assert described["openapi"].startswith("3.")
    api = server.server.http.api  # type: ignore[union-attr]
    registered = {(r.method.lower(), openapi.openapi_path("/".join(r.pattern))) for r in api.routes}
    in_description = {(method, path) for path, methods in described["paths"].items() for method in methods
                      if path != "/metrics"}
    assert registered - in_description == set(), "routes missing from leveret/http/openapi.py"
    assert in_description - registered == set(), "described operations that are not registered"


def test_description_needs_credentials_like_the_rest(server: ThreadedServer) -> None:
    status, _, _ = Client(server.http_port).request("GET", "/api/openapi.json", auth=False)
    assert status == 401


# Examples (used by the fuzz only) point at objects the server fixture makes, so that operations also succeed
# (2xx), where schemathesis checks that they refuse requests without or with wrong credentials.
PATH_EXAMPLES = {"vhost": "/", "user": "fuzz-user", "source": "fuzz-x", "kind": "q", "destination": "fuzz-q",
                 "props": "~"}
NAME_EXAMPLES = {"queues": "fuzz-q", "exchanges": "fuzz-x", "policies": "fuzz-p", "connections": "none",
                 "vhost-limits": "max-connections", "user-limits": "max-channels"}
BODY_EXAMPLES = {
    "QueueDeclare": {"durable": True, "auto_delete": False, "arguments": {}},
    "ExchangeDeclare": {"type": "direct", "durable": True},
    "GetRequest": {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"},
    "PublishRequest": {"routing_key": "", "payload": "hello", "payload_encoding": "string",
                       "properties": {"delivery_mode": 2, "headers": {"h": 1}}},
    "BindingRequest": {"routing_key": "", "arguments": {}},
    "UserRequest": {"password": "pw", "tags": "management"},
    "PermissionRequest": {"configure": ".*", "write": ".*", "read": ".*"},
    "PolicyRequest": {"pattern": "^fuzz", "definition": {"max-length": 100}, "apply-to": "queues"},
    "VHostRequest": {"description": "made by the fuzz"},
    "LimitRequest": {"value": 1000},
}


def with_examples(description: dict[str, Any]) -> dict[str, Any]:
    for path, methods in description["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                name = parameter["name"]
                if parameter["in"] != "path":
                    continue
                if name == "name":
                    parameter["example"] = NAME_EXAMPLES[path.split("/")[2]]
                elif name == "vhost" and method == "delete" and path == "/api/vhosts/{vhost}":
                    parameter["example"] = "fuzz-vhost"  # not the vhost every other example is in
                elif name in PATH_EXAMPLES:
                    parameter["example"] = PATH_EXAMPLES[name]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and body["schema"]["$ref"].rsplit("/", 1)[1] in BODY_EXAMPLES:
                body["example"] = BODY_EXAMPLES[body["schema"]["$ref"].rsplit("/", 1)[1]]
    return description


schema = schemathesis.openapi.from_dict(with_examples(openapi.build()))
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
schema.config.phases.update(phases=["examples", "fuzzing"])


@pytest.fixture(scope="module")
def base_url(server: ThreadedServer) -> str:
    return f"http://127.0.0.1:{server.http_port}"


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz_the_api_against_its_description(case: schemathesis.Case, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, auth=FUZZ_USER, timeout=10,
                           checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance, ignored_auth])
