"""The one table from core errors to statuses (leveret/errormap.py): its rows, and that the management API and
the control socket (``leveret ctl``) answer the same core error with the same status and text."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from leveret.config import Config, socket_path
from leveret.core import errors
from leveret.errormap import refusal
from leveret.node import ThreadedServer

from httphelp import Client


@pytest.mark.parametrize(("error", "status", "word"), [
    (errors.NotFound, 404, "Object Not Found"),
    (errors.PreconditionFailed, 400, "bad_request"),
    (errors.CommandInvalid, 400, "bad_request"),
    (errors.NotAllowed, 400, "bad_request"),
    (errors.NotImplementedFeature, 400, "bad_request"),
    (errors.AccessRefused, 403, "access_refused"),
    (errors.ResourceLocked, 409, "resource_locked"),
    (errors.ResourceError, 500, "internal_error"),
    (errors.InternalError, 500, "internal_error"),
])
def test_each_core_error_has_its_status_and_keeps_its_text(error: type[errors.BrokerError], status: int,
                                                           word: str) -> None:
    assert refusal(error("what went wrong")) == (status, word, "what went wrong")


def test_a_refused_permission_is_401_with_rabbitmqs_fixed_reason() -> None:
    assert refusal(errors.PermissionRefused("write access to exchange 'x' refused")) == \
        (401, "not_authorised", "Access refused.")


@pytest.fixture
def server(make_config: Callable[..., Config]) -> Iterator[ThreadedServer]:
    # a short data dir: the control socket lives there and AF_UNIX paths are short
    config = make_config(data_dir=tempfile.mkdtemp(prefix="lv-", dir="/tmp"), store="memory", http_port=0)
    srv = ThreadedServer(config).start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(config.data_dir, ignore_errors=True)


def control(server: ThreadedServer, command: str, **args: Any) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path(server.config.data_dir)))
        sock.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
        answer = sock.makefile("rb").readline()
    return json.loads(answer)  # type: ignore[no-any-return]


def test_http_and_the_control_socket_answer_a_core_error_alike(server: ThreadedServer) -> None:
    http = Client(server.http_port)
    status, body, _ = http.request("DELETE", "/api/queues/%2F/missing")
    answer = control(server, "delete_queue", name="missing")
    assert (status, body["error"]) == (404, "Object Not Found")
    assert (answer["ok"], answer["status"], answer["error"]) == (False, 404, body["reason"])

    http.ok("PUT", "/api/queues/%2F/q", {"durable": True})
    status, body, _ = http.request("PUT", "/api/queues/%2F/q", {"durable": False})
    answer = control(server, "declare_queue", name="q", durable=False)
    assert (status, body["error"]) == (400, "bad_request")
    assert "inequivalent arg 'durable'" in body["reason"]
    assert (answer["ok"], answer["status"], answer["error"]) == (False, 400, body["reason"])
