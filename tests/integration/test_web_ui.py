"""The management web page in a real browser: headless Chromium (Debian's, /usr/bin/chromium) driven by
Playwright, against a real Leveret, with pika on the AMQP side. Any JavaScript console error fails the test.

Skipped with a reason where Chromium or Playwright is missing (scripts/install-test-deps.sh installs them)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.node import ThreadedServer

from httphelp import Client

CHROMIUM = "/usr/bin/chromium"
playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and shutil.which("chromium") is None,
                                reason="Chromium is not installed (Debian package chromium)")
expect = playwright_sync.expect
TIMEOUT_MS = 15_000


@pytest.fixture
def server(http_server: ThreadedServer) -> ThreadedServer:
    return http_server


@pytest.fixture
def page(server: ThreadedServer) -> Iterator[tuple[Any, list[str]]]:
    """A browser page and the console errors it logs."""
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                                    headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            problems: list[str] = []
            tab.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                   if msg.type == "error" else None)
            tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            tab.on("dialog", lambda dialog: dialog.accept())  # the purge/delete/close confirmations
            yield tab, problems
        finally:
            browser.close()


def test_the_page_without_credentials_shows_the_login_and_no_api_data(server: ThreadedServer,
                                                                      page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    tab.goto(f"http://127.0.0.1:{server.http_port}/")
    tab.wait_for_selector("#login-form")
    assert tab.is_hidden("#overview") and tab.is_hidden("#nav")
    tab.fill("input[name=username]", "guest")
    tab.fill("input[name=password]", "wrong")
    tab.click("#login-form button")
    expect(tab.locator("#status")).to_contain_text("Login failed")
    assert tab.is_hidden("#overview")
    assert [p for p in problems if "401" not in p] == []  # the refused login itself is the one expected error


def test_login_rates_queues_publish_get_and_close(server: ThreadedServer, page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    base = f"http://127.0.0.1:{server.http_port}/"
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port, connection_attempts=1))
    ch = conn.channel()
    ch.queue_declare("web-q")

    tab.goto(base)
    tab.fill("input[name=username]", "guest")
    tab.fill("input[name=password]", "guest")
    tab.click("#login-form button")
    tab.wait_for_selector("#overview:not([hidden])")
    expect(tab.locator("#node")).to_have_text(re.compile(r"^Leveret "))
    assert tab.evaluate("sessionStorage.getItem('leveret.auth')") is not None

    # overview: a publish rate shows up at the next poll after publishing
    for i in range(300):
        ch.basic_publish("", "web-q", f"m{i}".encode())
    conn.process_data_events(0.1)
    expect(tab.locator("#rate-publish")).to_have_text(re.compile(r"^[0-9]+\.[0-9]$"))  # a number, not the dash
    expect(tab.locator("#rate-publish")).not_to_have_text("0.0")
    assert float(tab.text_content("#rate-publish") or "0") > 0
    assert "300" in (tab.text_content("#totals") or "")

    # queues: the pika queue is listed; declare one through the form
    tab.click("nav a[href='#queues']")
    tab.wait_for_selector("tr[data-queue='web-q']")
    expect(tab.locator("tr[data-queue='web-q'] td:nth-child(3)")).to_have_text("300")
    tab.fill("#declare-queue-form input[name=name]", "web-declared")
    tab.click("#declare-queue-form button")
    tab.wait_for_selector("tr[data-queue='web-declared']")
    assert Client(server.http_port).get("/api/queues/%2F/web-declared")["durable"] is True

    # purge and delete buttons
    tab.click("tr[data-queue='web-q'] button:has-text('Purge')")
    expect(tab.locator("tr[data-queue='web-q'] td:nth-child(3)")).to_have_text("0")
    tab.click("tr[data-queue='web-q'] button:has-text('Delete')")
    tab.wait_for_selector("tr[data-queue='web-q']", state="detached")

    # publish through the form, get it back through the get form
    tab.click("nav a[href='#publish']")
    tab.fill("#publish-form input[name=routing_key]", "web-declared")
    tab.fill("#publish-form input[name=content_type]", "text/plain")
    tab.fill("#publish-form input[name=headers]", '{"from": "the page"}')
    tab.fill("#publish-form textarea[name=payload]", "hello from the page")
    tab.select_option("#publish-form select[name=delivery_mode]", "2")
    tab.click("#publish-form button")
    expect(tab.locator("#status")).to_have_text("Message published")
    tab.click("nav a[href='#get']")
    tab.fill("#get-form input[name=queue]", "web-declared")
    tab.select_option("#get-form select[name=ackmode]", "ack_requeue_false")
    tab.click("#get-form button")
    tab.wait_for_selector("#got .message")
    assert tab.text_content("#got pre.payload") == "hello from the page"
    assert '"from":"the page"' in (tab.text_content("#got .message") or "")
    assert Client(server.http_port).get("/api/queues/%2F/web-declared")["messages"] == 0  # acked: gone

    # connections: close the pika connection with the button
    tab.click("nav a[href='#connections']")
    tab.wait_for_selector("tr[data-connection] button")
    tab.click("tr[data-connection] button:has-text('Close')")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(50):
            conn.process_data_events(0.1)
    assert (closed.value.reply_code, closed.value.reply_text) == (320, "CONNECTION_FORCED - Closed via management page")
    tab.wait_for_selector("tr[data-connection]", state="detached")

    assert problems == []


def test_a_refused_operation_shows_its_reason_and_keeps_the_session(server: ThreadedServer,
                                                                    page: tuple[Any, list[str]]) -> None:
    """A user whose patterns refuse an operation gets the API's 401 for it: the page says so and stays logged
    in (only credentials that no longer work end the session)."""
    tab, problems = page
    api = Client(server.http_port)
    api.ok("PUT", "/api/users/bob", {"password": "pw", "tags": "management"})
    api.ok("PUT", "/api/permissions/%2F/bob", {"configure": "^bob", "write": "^bob", "read": "^bob"})
    api.ok("PUT", "/api/queues/%2F/not-bobs", {})
    tab.goto(f"http://127.0.0.1:{server.http_port}/")
    tab.fill("input[name=username]", "bob")
    tab.fill("input[name=password]", "pw")
    tab.click("#login-form button")
    tab.wait_for_selector("#overview:not([hidden])")
    tab.click("nav a[href='#queues']")
    tab.wait_for_selector("tr[data-queue='not-bobs']")
    tab.click("tr[data-queue='not-bobs'] button:has-text('Purge')")
    expect(tab.locator("#status")).to_contain_text("Access refused")
    assert tab.is_visible("#nav") and tab.is_hidden("#login-form")
    assert tab.evaluate("sessionStorage.getItem('leveret.auth')") is not None
    assert [p for p in problems if "401" not in p] == []  # the refused purge itself is the one expected error


# --- every page: charts, lists, one queue, the other objects, admin, tracking --------------------------------


@pytest.fixture
def shot(tmp_path: Any) -> Any:
    """``shot(tab, name)`` saves a screenshot: into $LEVERET_SCREENSHOTS when set (docs/images), else tmp."""
    folder = os.environ.get("LEVERET_SCREENSHOTS") or str(tmp_path)

    def take(tab: Any, name: str) -> None:
        tab.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)

    return take


def log_in(tab: Any, server: ThreadedServer, where: str = "overview") -> None:
    """Logs in through the URL as RabbitMQ's page allows (``#/login/<user>/<password>``)."""
    tab.goto(f"http://127.0.0.1:{server.http_port}/#/login/guest/guest")
    tab.wait_for_selector("#overview:not([hidden])")
    assert "guest" not in tab.url  # the credentials leave the address bar
    if where != "overview":
        tab.click(f"nav a[href='#{where}']")
        tab.wait_for_selector(f"#{where}:not([hidden])")


def test_overview_charts_follow_publishing_and_show_node_health(server: ThreadedServer, page: tuple[Any, list[str]],
                                                                 shot: Any) -> None:
    tab, problems = page
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port, connection_attempts=1))
    ch = conn.channel()
    ch.queue_declare("charted")
    log_in(tab, server)
    tab.select_option("#range", "60,5")
    for i in range(120):
        ch.basic_publish("", "charted", f"m{i}".encode())
    conn.process_data_events(0.1)
    # the queued-messages chart draws a line whose legend reads the count once two samples exist (<= 2 polls)
    expect(tab.locator("#chart-lengths text.legend").first).to_have_text("ready 120", timeout=30_000)
    assert tab.locator("#chart-lengths path[data-series='ready']").count() == 1
    expect(tab.locator("#chart-rates path[data-series='publish']")).to_have_count(1, timeout=30_000)  # 3 samples
    expect(tab.locator("#chart-rates path[data-series='redeliver']")).to_have_count(1)
    expect(tab.locator("#rate-redeliver")).to_contain_text(re.compile(r"\d"))
    health = tab.locator("#health")
    expect(health).to_contain_text("File descriptors")
    expect(health).to_contain_text("Uptime")
    expect(health).to_contain_text("watermark")
    expect(tab.locator("#health span.good")).to_have_count(2)  # memory and disk: no alarm
    expect(tab.locator("#listener-rows")).to_contain_text("amqp")
    shot(tab, "overview")
    conn.close()
    assert problems == []


def test_queue_list_filters_sorts_pages_and_hides_internal_queues(server: ThreadedServer,
                                                                  page: tuple[Any, list[str]], shot: Any) -> None:
    tab, problems = page
    api = Client(server.http_port)
    for i in range(25):
        api.ok("PUT", f"/api/queues/%2F/fq-{i:03}", {})
    for internal in ("fq-x.retry.1000", "leveret.status"):
        api.ok("PUT", f"/api/queues/%2F/{internal}", {})
    log_in(tab, server, "queues")
    tab.select_option("#queue-filter select[name=page_size]", "20")
    tab.fill("#queue-filter input[name=name]", "FQ-")  # case-insensitive
    expect(tab.locator("#queue-pager span")).to_have_text("25 of 27 queues · page 1 of 2")
    expect(tab.locator("#queue-rows tr")).to_have_count(20)
    assert tab.locator("tr[data-queue='fq-x.retry.1000']").count() == 0
    tab.click("#queue-pager button:has-text('Next')")
    expect(tab.locator("#queue-pager span")).to_have_text("25 of 27 queues · page 2 of 2")
    expect(tab.locator("#queue-rows tr")).to_have_count(5)
    tab.check("#queue-filter input[name=internal]")
    expect(tab.locator("#queue-pager span")).to_have_text("26 of 27 queues · page 1 of 2")
    tab.fill("#queue-filter input[name=name]", r"^fq-00\d$")
    tab.check("#queue-filter input[name=regex]")
    expect(tab.locator("#queue-rows tr")).to_have_count(10)
    # sort by name, descending: from the keyboard (the column headers are buttons)
    header = tab.locator("#queues th[data-sort='name'] button")
    header.focus()
    tab.keyboard.press("Enter")
    expect(tab.locator("#queues th[data-sort='name']")).to_have_attribute("aria-sort", "descending")
    expect(tab.locator("#queue-rows tr").first).to_have_attribute("data-queue", "fq-009")
    shot(tab, "queues")
    assert problems == []


def test_queue_page_charts_consumers_bindings_get_and_delete(server: ThreadedServer, page: tuple[Any, list[str]],
                                                            shot: Any) -> None:
    tab, problems = page
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port, connection_attempts=1))
    ch = conn.channel()
    ch.queue_declare("detail-q", arguments={"x-max-length": 1000})
    ch.queue_declare("watched")
    ch.basic_consume("watched", lambda *args: None, consumer_tag="web-consumer")
    for i in range(5):
        ch.basic_publish("", "detail-q", f"detail {i}".encode())
    conn.process_data_events(0.1)
    log_in(tab, server, "queues")
    tab.click("tr[data-queue='watched'] a")
    tab.wait_for_selector("#queue:not([hidden])")
    expect(tab.locator("#queue-consumer-rows")).to_contain_text("web-consumer")
    tab.goto(f"http://127.0.0.1:{server.http_port}/#queue/%2F/detail-q")
    expect(tab.locator("#queue-title")).to_have_text("detail-q (vhost /)")
    expect(tab.locator("#queue-details")).to_contain_text('{"x-max-length":1000}')
    expect(tab.locator("#queue-details")).to_contain_text("classic")
    assert tab.locator("#queue-chart-lengths").count() == 1
    tab.fill("#queue-bind-form input[name=source]", "amq.topic")
    tab.fill("#queue-bind-form input[name=routing_key]", "orders.#")
    tab.click("#queue-bind-form button")
    expect(tab.locator("#queue-binding-rows")).to_contain_text("orders.#")
    tab.select_option("#queue-get-form select[name=ackmode]", "ack_requeue_false")
    tab.fill("#queue-get-form input[name=count]", "2")
    tab.click("#queue-get-form button")
    expect(tab.locator("#queue-got .message")).to_have_count(2)
    assert tab.text_content("#queue-got pre.payload") == "detail 0"
    expect(tab.locator("#queue-details")).to_contain_text("3")
    shot(tab, "queue")
    tab.click("#queue-binding-rows button:has-text('Unbind')")
    expect(tab.locator("#queue-binding-rows")).not_to_contain_text("orders.#")
    tab.click("#queue-delete")
    tab.wait_for_selector("#queues:not([hidden])")
    assert Client(server.http_port).request("GET", "/api/queues/%2F/detail-q")[0] == 404
    conn.close()
    assert problems == []


def test_move_messages_and_replay_dead_letters_from_the_queue_page(server: ThreadedServer,
                                                                   page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    api = Client(server.http_port)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port, connection_attempts=1))
    ch = conn.channel()
    ch.queue_declare("ui-from")
    ch.queue_declare("ui-to")
    for i in range(4):
        ch.basic_publish("", "ui-from", f"move {i}".encode())
    ch.queue_declare("ui-dead")
    ch.queue_declare("ui-work", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "ui-dead"})
    for i in range(2):
        ch.basic_publish("", "ui-work", f"work {i}".encode())
    for _ in range(2):
        method, _, _ = ch.basic_get("ui-work")
        ch.basic_reject(method.delivery_tag, requeue=False)
    conn.process_data_events(0.1)
    log_in(tab, server)
    tab.goto(f"http://127.0.0.1:{server.http_port}/#queue/%2F/ui-from")
    expect(tab.locator("#queue-title")).to_have_text("ui-from (vhost /)")
    tab.fill("#queue-move-form input[name=destination]", "ui-to")
    tab.fill("#queue-move-form input[name=count]", "3")
    tab.click("#queue-move-form button")
    expect(tab.locator("#status")).to_have_text("3 message(s) moved, 1 left in 'ui-from'")
    assert api.get("/api/queues/%2F/ui-to")["messages_ready"] == 3
    tab.fill("#queue-move-form input[name=destination]", "no-such-queue")
    tab.click("#queue-move-form button")
    expect(tab.locator("#status.error")).to_contain_text("404")
    tab.fill("#queue-move-form input[name=destination]", "ui-to")
    tab.click("#queue-move-form button")  # no count: every ready message
    expect(tab.locator("#status")).to_have_text("1 message(s) moved, 0 left in 'ui-from'")
    assert [ch.basic_get("ui-to", auto_ack=True)[2] for _ in range(4)] == [f"move {i}".encode() for i in range(4)]
    tab.goto(f"http://127.0.0.1:{server.http_port}/#queue/%2F/ui-dead")
    expect(tab.locator("#queue-title")).to_have_text("ui-dead (vhost /)")
    tab.click("#queue-replay")
    expect(tab.locator("#status")).to_have_text("2 message(s) moved, 0 left in 'ui-dead'")
    assert api.get("/api/queues/%2F/ui-work")["messages_ready"] == 2
    assert api.get("/api/queues/%2F/ui-dead")["messages_ready"] == 0
    conn.close()
    assert [p for p in problems if "404" not in p] == []  # the refused move logs its failed request


def test_exchanges_bindings_connections_channels_consumers(server: ThreadedServer, page: tuple[Any, list[str]],
                                                          shot: Any) -> None:
    tab, problems = page
    params = pika.ConnectionParameters("127.0.0.1", server.port, connection_attempts=1,
                                       client_properties={"connection_name": "web-client"})
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=7)
    ch.queue_declare("bound-q")
    ch.basic_consume("bound-q", lambda *args: None, consumer_tag="listed-consumer")
    conn.process_data_events(0.1)
    log_in(tab, server, "exchanges")
    tab.fill("#declare-exchange-form input[name=name]", "web-x")
    tab.select_option("#declare-exchange-form select[name=type]", "topic")
    tab.click("#declare-exchange-form button")
    expect(tab.locator("tr[data-exchange='web-x'] td:nth-child(3)")).to_have_text("topic")
    shot(tab, "exchanges")

    tab.click("nav a[href='#bindings']")
    tab.fill("#binding-form input[name=source]", "web-x")
    tab.fill("#binding-form input[name=destination]", "bound-q")
    tab.fill("#binding-form input[name=routing_key]", "a.*")
    tab.click("#binding-form button")
    expect(tab.locator("tr[data-binding='web-x>bound-q']")).to_contain_text("a.*")
    shot(tab, "bindings")
    tab.click("tr[data-binding='web-x>bound-q'] button:has-text('Unbind')")
    tab.wait_for_selector("tr[data-binding='web-x>bound-q']", state="detached")
    tab.click("nav a[href='#exchanges']")
    tab.click("tr[data-exchange='web-x'] button:has-text('Delete')")
    tab.wait_for_selector("tr[data-exchange='web-x']", state="detached")

    tab.click("nav a[href='#connections']")
    row = tab.locator("tr[data-connection]")
    expect(row).to_contain_text("web-client")
    expect(row).to_contain_text("AMQP 0-9-1")
    expect(row.locator("td:nth-child(6)")).to_have_text("no")  # not TLS
    shot(tab, "connections")
    tab.click("nav a[href='#channels']")
    channel = tab.locator("tr[data-channel]")
    expect(channel.locator("td:nth-child(4)")).to_have_text("7")
    expect(channel.locator("td:nth-child(7)")).to_have_text("confirm")
    shot(tab, "channels")
    tab.click("nav a[href='#consumers']")
    expect(tab.locator("tr[data-consumer='listed-consumer']")).to_contain_text("bound-q")
    shot(tab, "consumers")
    conn.close()
    assert problems == []


def test_admin_users_permissions_vhosts_limits_policies(server: ThreadedServer, page: tuple[Any, list[str]],
                                                       shot: Any) -> None:
    tab, problems = page
    api = Client(server.http_port)
    log_in(tab, server, "admin")
    tab.fill("#user-form input[name=name]", "carol")
    tab.fill("#user-form input[name=password]", "secret")
    tab.fill("#user-form input[name=tags]", "management")
    tab.click("#user-form button")
    expect(tab.locator("tr[data-user='carol']")).to_contain_text("management")
    tab.fill("#permission-form input[name=user]", "carol")
    tab.fill("#permission-form input[name=configure]", "^carol")
    tab.click("#permission-form button")
    expect(tab.locator("#permission-rows")).to_contain_text("^carol")
    assert api.get("/api/permissions/%2F/carol")["configure"] == "^carol"
    tab.fill("#limit-form input[name=value]", "50")
    tab.click("#limit-form button")
    expect(tab.locator("tr[data-vhost='/']")).to_contain_text('"max-connections":50')
    tab.fill("#policy-form input[name=name]", "cap")
    tab.fill("#policy-form input[name=pattern]", "^capped")
    tab.select_option("#policy-form select[name=apply-to]", "queues")
    tab.fill("#policy-form input[name=definition]", '{"max-length": 10}')
    tab.click("#policy-form button")
    expect(tab.locator("tr[data-policy='cap']")).to_contain_text('{"max-length":10}')
    api.ok("PUT", "/api/queues/%2F/capped-q", {})
    assert api.get("/api/queues/%2F/capped-q")["policy"] == "cap"
    tab.fill("#vhost-form input[name=name]", "web-vhost")
    tab.click("#vhost-form button")
    expect(tab.locator("tr[data-vhost='web-vhost']")).to_have_count(1)
    shot(tab, "admin")
    with tab.expect_download() as download:
        tab.click("#definitions-export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert "carol" in [u["name"] for u in exported["users"]]
    exported["queues"] = [{"name": "imported-q", "vhost": "/", "durable": True, "auto_delete": False,
                           "arguments": {}}]
    tab.set_input_files("#definitions-import", files=[{"name": "defs.json", "mimeType": "application/json",
                                                       "buffer": json.dumps(exported).encode()}])
    expect(tab.locator("#status")).to_have_text("Definitions imported from defs.json")
    assert api.get("/api/queues/%2F/imported-q")["durable"] is True
    tab.click("tr[data-policy='cap'] button:has-text('Delete')")
    tab.wait_for_selector("tr[data-policy='cap']", state="detached")
    tab.click("tr[data-user='carol'] button:has-text('Delete')")
    tab.wait_for_selector("tr[data-user='carol']", state="detached")
    assert api.request("GET", "/api/users/carol")[0] == 404
    assert problems == []


def test_track_a_message_by_id(server: ThreadedServer, page: tuple[Any, list[str]], shot: Any) -> None:
    tab, problems = page
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port, connection_attempts=1))
    ch = conn.channel()
    ch.queue_declare("tracked-q")
    ch.basic_publish("", "tracked-q", b"follow me", pika.BasicProperties(message_id="order-42"))
    method, _, _ = ch.basic_get("tracked-q")
    assert method is not None
    ch.basic_ack(method.delivery_tag)
    conn.process_data_events(0.1)
    log_in(tab, server, "tracking")
    tab.fill("#tracking-form input[name=message_id]", "order-42")
    tab.click("#tracking-form button")
    expect(tab.locator("#tracking-rows tr[data-event='published']")).to_contain_text("tracked-q")
    expect(tab.locator("#tracking-rows tr[data-event='acked']")).to_have_count(1)
    shot(tab, "tracking")
    tab.fill("#tracking-form input[name=message_id]", "no-such-id")
    tab.click("#tracking-form button")
    expect(tab.locator("#status")).to_contain_text("no record of message id 'no-such-id'")
    assert [p for p in problems if "404" not in p] == []  # the unknown id itself is the one expected error


def test_readable_on_a_phone(server: ThreadedServer, page: tuple[Any, list[str]], shot: Any) -> None:
    tab, problems = page
    Client(server.http_port).ok("PUT", "/api/queues/%2F/a-queue-with-a-rather-long-name-for-a-small-screen", {})
    tab.set_viewport_size({"width": 390, "height": 844})
    log_in(tab, server, "queues")
    tab.wait_for_selector("tr[data-queue]")
    # nothing sticks out sideways: wide tables scroll inside their own box
    assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(tab, "phone-queues")
    assert problems == []


def test_tasks_view_shows_a_failed_task_with_its_traceback_and_dead_letter(server: ThreadedServer,
                                                                           page: tuple[Any, list[str]],
                                                                           shot: Any) -> None:
    from leveret.tasks import App, Retry, Worker

    tab, problems = page
    app = App(f"amqp://guest:guest@127.0.0.1:{server.port}/", name="web", status_ttl=60)
    worker = None
    try:
        @app.task(name="charge-card", queue="payments", retry=Retry.intervals([0.05]))
        def charge(amount: int) -> None:
            raise ValueError(f"card declined for {amount}")

        @app.task(name="send-receipt", queue="payments")
        def receipt() -> str:
            return "sent"

        worker = Worker(app).start()
        failed = charge.send(amount=42)
        assert failed.wait(10) == "gave_up"
        assert receipt.send().wait(10) == "succeeded"
        log_in(tab, server, "tasks")
        expect(tab.locator("#worker-rows tr[data-worker]")).to_have_count(1)  # the worker, consuming "payments"
        expect(tab.locator("#worker-rows tr[data-worker] td:nth-child(3)")).to_contain_text("payments")
    finally:
        if worker is not None:
            worker.stop()
        app.close()
    row = tab.locator(f"tr[data-task='{failed.id}']")
    expect(row).to_contain_text("charge-card")
    expect(row.locator("td:nth-child(4)")).to_have_text("gave_up")
    expect(row).to_contain_text("ValueError: card declined for 42")
    expect(tab.locator("tr[data-dead='payments.dead'] td:nth-child(2)")).to_have_text("1")
    tab.select_option("#task-filter select[name=state]", "succeeded")
    expect(tab.locator("#task-rows tr[data-state='succeeded']")).to_have_count(1)
    expect(row).to_have_count(0)
    tab.select_option("#task-filter select[name=state]", "")
    shot(tab, "tasks")
    tab.click(f"tr[data-task='{failed.id}'] a")
    tab.wait_for_selector("#task:not([hidden])")
    expect(tab.locator("#task-details")).to_contain_text("gave_up")
    expect(tab.locator("#task-error pre.traceback")).to_contain_text("ValueError: card declined for 42")
    expect(tab.locator("#task-timeline tr[data-event='published']").first).to_be_visible()
    shot(tab, "task")
    tab.click("nav a[href='#tasks']")
    tab.click("tr[data-dead='payments.dead'] button:has-text('Replay')")  # back to payments (no worker now)
    expect(tab.locator("#status")).to_have_text("1 message(s) moved, 0 left in 'payments.dead'")
    expect(tab.locator("tr[data-dead='payments.dead'] td:nth-child(2)")).to_have_text("0")
    assert Client(server.http_port).get("/api/queues/%2F/payments")["messages_ready"] == 1
    assert problems == []


def test_revoke_a_queued_task_from_its_page(server: ThreadedServer, page: tuple[Any, list[str]]) -> None:
    """The Revoke button sends leveret.tasks' own control message (a running worker hears it) and the "revoked"
    event (the status book records it), through the API's publish."""
    import time

    from leveret.tasks import App, Worker

    tab, problems = page
    app = App(f"amqp://guest:guest@127.0.0.1:{server.port}/", name="web", status_ttl=60)
    worker = None
    try:
        @app.task(name="nightly-report", queue="reports-later")
        def report() -> None:
            pass

        @app.task(name="other", queue="elsewhere")
        def other() -> None:
            pass

        worker = Worker(app, queues=["elsewhere"]).start()  # listens to leveret.control; not to reports-later
        handle = report.send()
        deadline = time.monotonic() + 10
        while Client(server.http_port).request("GET", f"/api/task-status/%2F/{handle.id}")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        log_in(tab, server, "tasks")
        tab.click(f"tr[data-task='{handle.id}'] a")
        expect(tab.locator("#task-details")).to_contain_text("queued")
        tab.click("#task-revoke")
        expect(tab.locator("#status")).to_have_text(f"Task {handle.id} revoked")
        expect(tab.locator("#task-details")).to_contain_text("revoked")
        expect(tab.locator("#task-revoke")).to_be_hidden()
        assert Client(server.http_port).get(f"/api/task-status/%2F/{handle.id}")["state"] == "revoked"
        while handle.id not in worker.revoked:
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
    finally:
        if worker is not None:
            worker.stop()
        app.close()
    assert problems == []


def test_retry_now_runs_a_task_waiting_for_its_next_attempt(server: ThreadedServer,
                                                           page: tuple[Any, list[str]]) -> None:
    """A task that failed once waits 60 s in the broker (the queue's x-retry-intervals); its Retry now button
    releases it (queue action retry_now) and the worker runs it again at once."""
    import time

    from leveret.tasks import App, Retry, Worker

    tab, problems = page
    api = Client(server.http_port)
    app = App(f"amqp://guest:guest@127.0.0.1:{server.port}/", name="web", status_ttl=60)
    worker = None
    calls: list[int] = []
    try:
        @app.task(name="sync-account", queue="accounts", retry=Retry.intervals([60]))
        def sync_account() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("upstream unavailable")
            return "synced"

        @app.task(name="noop", queue="accounts")
        def noop() -> None:
            pass

        worker = Worker(app).start()
        assert noop.send().wait(10) == "succeeded"
        handle = sync_account.send()
        deadline = time.monotonic() + 15
        while True:  # retrying, and rejected by the worker: the message waits in the broker's retry lane
            code, record, _ = api.request("GET", f"/api/task-status/%2F/{handle.id}")
            queue = api.get("/api/queues/%2F/accounts")
            if (code == 200 and record["state"] == "retrying" and queue["messages"] == 0
                    and queue["messages_unacknowledged"] == 0):
                break
            assert time.monotonic() < deadline, (code, record, queue)
            time.sleep(0.05)
        log_in(tab, server, "tasks")
        row = tab.locator(f"tr[data-task='{handle.id}']")
        expect(row.locator("td:nth-child(4)")).to_have_text("retrying")
        expect(row.locator("button:has-text('Retry now')")).to_be_visible()
        expect(tab.locator("#task-rows tr[data-state='succeeded'] button")).to_have_count(0)  # only when waiting
        tab.click(f"tr[data-task='{handle.id}'] a")
        expect(tab.locator("#task-details")).to_contain_text("retrying")
        expect(tab.locator("#task-error")).to_contain_text("ConnectionError: upstream unavailable")
        tab.click("#task-retry-now")
        expect(tab.locator("#status")).to_have_text(f"Task {handle.id} released: its next attempt runs now")
        assert handle.wait(15) == "succeeded"  # long before the 60 s retry interval
        assert len(calls) == 2
        expect(tab.locator("#task-details")).to_contain_text("succeeded")  # the live refresh
        expect(tab.locator("#task-retry-now")).to_be_hidden()
        code, answer, _ = api.request("POST", "/api/queues/%2F/accounts/actions",
                                      {"action": "retry_now", "message_id": handle.id})
        assert code == 404, answer  # nothing waits any more: it ran once, and will not run again at its due time
        assert "no message" in answer["reason"]
    finally:
        if worker is not None:
            worker.stop()
        app.close()
    assert problems == []


def test_a_management_user_sees_what_the_api_lets_them_see(server: ThreadedServer,
                                                           page: tuple[Any, list[str]]) -> None:
    """The page asks the API as the logged-in user: admin-only lists say they are not shown, others work."""
    tab, problems = page
    api = Client(server.http_port)
    api.ok("PUT", "/api/users/dora", {"password": "pw", "tags": "management"})
    api.ok("PUT", "/api/permissions/%2F/dora", {})
    tab.goto(f"http://127.0.0.1:{server.http_port}/#/login/dora/pw")
    tab.wait_for_selector("#overview:not([hidden])")
    expect(tab.locator("#user")).to_have_text("dora (management)")
    tab.click("nav a[href='#admin']")
    expect(tab.locator("#user-rows")).to_contain_text("Not shown: Not administrator user")
    expect(tab.locator("#policy-rows")).to_contain_text("No policies")  # a management user may list policies
    tab.click("nav a[href='#queues']")
    expect(tab.locator("#queue-pager span")).to_contain_text("queues")
    assert tab.is_visible("#nav")
    assert [p for p in problems if "401" not in p] == []  # the refused admin lists are the expected errors
