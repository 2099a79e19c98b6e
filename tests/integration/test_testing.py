"""leveret.testing and the pytest plugin (leveret.pytest_plugin, loaded through its ``pytest11`` entry point):
an embedded broker that real clients use, per-test vhosts, the session fixtures, eager mode, and that the plugin
does nothing in a session that uses none of it."""

from __future__ import annotations

import json
import socket
import urllib.request
from base64 import b64encode
from typing import Any

import pika
import pika.exceptions
import pytest

from leveret import testing
from leveret.tasks import App

pytest_plugins = ["pytester"]
INNER = ("-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function")  # an inner session's options


def round_trip(url: str, queue: str) -> bytes:
    """Declare ``queue``, publish to it with confirms, get the message back (pika, a real client)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue)
        ch.basic_publish("", queue, b"hello")
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        assert method is not None
        return body
    finally:
        conn.close()


def queue_exists(url: str, queue: str) -> bool:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        conn.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    finally:
        if conn.is_open:
            conn.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_broker_context_manager_serves_real_clients_then_frees_the_port() -> None:
    with testing.broker() as url:
        assert url.startswith("amqp://guest:guest@127.0.0.1:") and url.endswith("/")
        assert round_trip(url, "q") == b"hello"
        port = pika.URLParameters(url).port
    assert refused(port)


def test_start_broker_with_management_api_and_vhosts() -> None:
    server = testing.start_broker(http=True)
    try:
        auth = b64encode(b"guest:guest").decode()
        request = urllib.request.Request(f"{server.http_url}/api/overview", headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["product_name"] == "Leveret"
        a, b = server.new_vhost(), server.new_vhost("other/vhost")
        assert b.endswith("/other%2Fvhost")
        round_trip(a, "only-in-a")
        assert queue_exists(a, "only-in-a") and not queue_exists(b, "only-in-a")
        assert not queue_exists(server.url, "only-in-a")
        server.delete_vhost("other/vhost")
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
            pika.BlockingConnection(pika.URLParameters(b))
        server.delete_vhost("other/vhost")  # gone already: no error
    finally:
        server.stop()
    server.stop()  # twice: harmless
    assert refused(server.port)


def test_without_http_the_management_api_is_off() -> None:
    server = testing.start_broker()
    try:
        assert server.http_port == -1
        with pytest.raises(RuntimeError, match="management API is off"):
            server.http_url  # noqa: B018
    finally:
        server.stop()


def test_amqp_url_quotes_vhost_and_credentials() -> None:
    assert testing.amqp_url(5, "/") == "amqp://guest:guest@127.0.0.1:5/"
    assert testing.amqp_url(5, "a/b", user="u@x", password="p:w") == "amqp://u%40x:p%3Aw@127.0.0.1:5/a%2Fb"
    params = pika.URLParameters(testing.amqp_url(5, "a/b"))
    assert params.virtual_host == "a/b"


# --- the plugin's fixtures, as a user's test suite sees them (pytester runs an inner pytest session) --------

def test_fixtures_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="""
        import pika, pika.exceptions, pytest

        seen = []

        def test_session_broker(leveret_broker, leveret_server):
            assert leveret_broker == leveret_server.url
            seen.append(leveret_broker)

        def test_session_broker_is_shared(leveret_broker):
            assert leveret_broker == seen[0]

        def test_fresh_vhost_one(leveret_url, leveret_broker):
            assert leveret_url != leveret_broker
            ch = pika.BlockingConnection(pika.URLParameters(leveret_url)).channel()
            ch.queue_declare("jobs")
            ch.basic_publish("", "jobs", b"left behind")
            seen.append(leveret_url)

        def test_fresh_vhost_two(leveret_url):
            assert leveret_url != seen[1]
            ch = pika.BlockingConnection(pika.URLParameters(leveret_url)).channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                ch.queue_declare("jobs", passive=True)   # the other test's queue is not here

        def test_previous_vhost_was_deleted():
            with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
                pika.BlockingConnection(pika.URLParameters(seen[1]))
    """)
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=5)


def test_a_session_without_the_fixtures_starts_no_broker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="""
        import sys, threading

        def test_nothing_started():
            assert not [t for t in threading.enumerate() if t.name == "leveret-server"]
            assert "leveret.node" not in sys.modules and "leveret.testing" not in sys.modules
    """)
    # a subprocess: this process has imported the broker already
    result = pytester.runpytest_subprocess(*INNER)
    result.assert_outcomes(passed=1)


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off="""
        def test_uses(leveret_broker):
            pass
    """)
    result = pytester.runpytest("-p", "no:leveret", *INNER)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'leveret_broker' not found*"])


# --- eager mode ----------------------------------------------------------------------------------------------


def test_marker_without_app_or_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad="""
        import pytest

        @pytest.mark.leveret_eager
        def test_it():
            pass
    """)
    result = pytester.runpytest(*INNER)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*needs an App argument or the ini option leveret_app*"])


def test_eager_refuses_an_object_without_eager_mode(leveret_eager: Any) -> None:
    with pytest.raises(pytest.UsageError, match="has no eager mode"):
        leveret_eager(object())


def test_eager_fixture_runs_tasks_inline_without_a_broker(leveret_eager: Any) -> None:
    app = App("amqp://guest:guest@127.0.0.1:1/", name="eager")  # nothing listens on port 1
    calls: list[tuple[int, int]] = []

    @app.task
    def add(x: int, y: int) -> int:
        calls.append((x, y))
        return x + y

    assert leveret_eager(app) is app and app.eager is True
    handle = add.send(x=2, y=3)
    assert calls == [(2, 3)]
    assert handle.status() == "succeeded"
    assert handle.result(timeout=1) == 5
    with pytest.raises(TypeError):
        add.send(x=1)  # the payload is still checked against the signature


def test_eager_marker_with_ini_app(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(myapp="""
        from leveret.tasks import App
        app = App("amqp://guest:guest@127.0.0.1:1/", name="marked")

        @app.task
        def double(x: int) -> int:
            return 2 * x
    """)
    pytester.makeini("[pytest]\nleveret_app = myapp:app\n")
    pytester.makepyfile(test_marked="""
        import pytest
        from myapp import app, double

        @pytest.mark.leveret_eager
        def test_eager():
            assert app.eager is True
            assert double.send(x=21).result(timeout=1) == 42

        @pytest.mark.leveret_eager(app)
        def test_eager_by_object():
            assert app.eager is True

        def test_restored_after():
            assert app.eager is False
    """)
    pytester.syspathinsert()
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=3)


def test_marker_restores_eager_after_the_test(pytester: pytest.Pytester) -> None:
    """The marker's bookkeeping, with a stand-in App (any object with an ``eager`` attribute)."""
    pytester.makepyfile(test_flag="""
        import pytest

        class FakeApp:
            eager = False

        app = FakeApp()

        @pytest.mark.leveret_eager(app)
        def test_on():
            assert app.eager is True

        def test_off():
            assert app.eager is False

        def test_fixture(leveret_eager):
            leveret_eager(app)
            assert app.eager is True

        def test_off_again():
            assert app.eager is False
    """)
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=4)


def test_recipe_real_worker_for_leveret_tasks(pytester: pytest.Pytester) -> None:
    """docs/testing.md, "leveret.tasks: a real worker", run as a user's suite."""
    pytester.makepyfile(shoptasks="""
        import os
        from leveret.tasks import App

        app = App(os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"), name="shop")

        @app.task(name="resize")
        def resize(image_id: int) -> dict:
            return {"width": 800}
    """)
    pytester.makeconftest("""
        import os
        import pytest
        import leveret.testing
        from leveret.tasks import Worker

        _broker = leveret.testing.start_broker()
        os.environ["BROKER_URL"] = _broker.url

        def pytest_unconfigure(config):
            _broker.stop()

        @pytest.fixture
        def worker():
            from shoptasks import app
            worker = Worker(app, concurrency=2).start()
            yield worker
            worker.stop()
            app.close()
    """)
    pytester.makepyfile(test_shop="""
        from shoptasks import app, resize

        def test_resize(worker):
            assert app.url == __import__("os").environ["BROKER_URL"] != "amqp://guest:guest@127.0.0.1:5672/"
            assert resize.send(image_id=1).wait(timeout=30) == "succeeded"
    """)
    result = pytester.runpytest_subprocess(*INNER)
    result.assert_outcomes(passed=1)
