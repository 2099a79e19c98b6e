"""The management API's changes are checked against the calling user's configure/write/read patterns, as
RabbitMQ's management plugin does (it runs them as AMQP operations of that user). Run on Leveret and, when the
reference RabbitMQ has its management plugin on 127.0.0.1:15672 (``.ci/run`` enables it), on RabbitMQ too:
the same requests must get the same statuses and texts."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

from leveret.config import Config
from leveret.node import ThreadedServer

from httphelp import RABBITMQ_HTTP_PORT, Client, rabbitmq_management


@pytest.fixture(params=["leveret", "rabbitmq"])
def http_port(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Iterator[int]:
    if request.param == "rabbitmq":
        if not rabbitmq_management():
            pytest.skip("no RabbitMQ management API on 127.0.0.1:15672 (rabbitmq-plugins enable "
                        "rabbitmq_management)")
        yield RABBITMQ_HTTP_PORT
        return
    server = ThreadedServer(make_config(http_port=0)).start()
    try:
        yield server.http_port
    finally:
        server.stop()


@pytest.fixture
def vhost(http_port: int) -> Iterator[str]:
    """A fresh vhost made over the API by guest (who is then allowed everything in it), deleted afterwards."""
    name = f"perm-{uuid.uuid4().hex[:8]}"
    api = Client(http_port)
    api.ok("PUT", f"/api/vhosts/{name}")
    try:
        yield name
    finally:
        api.request("DELETE", f"/api/vhosts/{name}")


def test_the_creator_of_a_vhost_may_use_it(http_port: int, vhost: str) -> None:
    api = Client(http_port)
    assert api.get(f"/api/permissions/{vhost}/guest") == {"user": "guest", "vhost": vhost, "configure": ".*",
                                                          "write": ".*", "read": ".*"}
    api.ok("PUT", f"/api/exchanges/{vhost}/orders", {"type": "topic"})


def test_changes_follow_the_callers_patterns(http_port: int, vhost: str) -> None:
    api = Client(http_port)
    user = f"mgr-{uuid.uuid4().hex[:6]}"
    api.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})
    try:
        api.ok("PUT", f"/api/exchanges/{vhost}/orders", {"type": "topic"})  # made by guest, before the patterns
        api.ok("PUT", f"/api/queues/{vhost}/bq", {})
        api.ok("PUT", f"/api/permissions/{vhost}/{user}", {"configure": "^a", "write": "^a", "read": "^a"})
        mgr = Client(http_port, user, "pw")
        refused = (401, {"error": "not_authorised", "reason": "Access refused."})

        def status(method: str, path: str, body: object = None) -> tuple[int, object]:
            code, value, _ = mgr.request(method, path, body)
            return code, value

        # configure
        assert status("PUT", f"/api/exchanges/{vhost}/orders2", {"type": "topic"}) == refused
        assert status("PUT", f"/api/exchanges/{vhost}/abc", {"type": "topic"})[0] == 201
        assert status("PUT", f"/api/queues/{vhost}/aq", {})[0] == 201
        assert status("DELETE", f"/api/exchanges/{vhost}/orders") == refused
        assert status("DELETE", f"/api/queues/{vhost}/bq") == refused
        # read on the queue: get and purge
        get = {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}
        assert status("POST", f"/api/queues/{vhost}/aq/get", get) == (200, [])
        assert status("POST", f"/api/queues/{vhost}/bq/get", get) == (401, {
            "error": "not_authorised",
            "reason": f"ACCESS_REFUSED - access to queue 'bq' in vhost '{vhost}' refused for user '{user}'"})
        assert status("DELETE", f"/api/queues/{vhost}/bq/contents") == refused
        assert status("DELETE", f"/api/queues/{vhost}/nothere/contents")[0] == 404  # missing before refused
        assert status("POST", f"/api/queues/{vhost}/nothere/get", get)[0] == 401  # get: refused before missing
        # write on the exchange: publish (RabbitMQ answers with the channel's error, as a bad request)
        publish = {"routing_key": "a", "payload": "x", "payload_encoding": "string", "properties": {}}
        assert status("POST", f"/api/exchanges/{vhost}/orders/publish", publish) == (400, {
            "error": "bad_request",
            "reason": f"403 ACCESS_REFUSED - access to exchange 'orders' in vhost '{vhost}' refused for user "
                      f"'{user}'"})
        assert status("POST", f"/api/exchanges/{vhost}/abc/publish", publish) == (200, {"routed": False})
        # bindings: write on the destination, read on the source
        assert status("POST", f"/api/bindings/{vhost}/e/orders/q/aq", {"routing_key": "k"}) == refused
        assert status("POST", f"/api/bindings/{vhost}/e/abc/q/bq", {"routing_key": "k"}) == refused
        assert status("POST", f"/api/bindings/{vhost}/e/abc/q/aq", {"routing_key": "k"})[0] == 201
        key = api.get(f"/api/bindings/{vhost}/e/abc/q/aq")[0]["properties_key"]
        api.ok("PUT", f"/api/permissions/{vhost}/{user}", {"configure": "^a", "write": "^$", "read": "^a"})
        assert status("DELETE", f"/api/bindings/{vhost}/e/abc/q/aq/{quote(key, safe='')}") == refused
    finally:
        api.request("DELETE", f"/api/users/{user}")
