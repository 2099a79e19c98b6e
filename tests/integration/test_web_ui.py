"""The management web page in a real browser: headless Chromium (Debian's, /usr/bin/chromium) driven by
Playwright, against a real Leveret, with pika on the AMQP side. Any JavaScript console error fails the test.

Skipped with a reason where Chromium or Playwright is missing (scripts/install-test-deps.sh installs them)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from leveret.server.app import ThreadedServer

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
