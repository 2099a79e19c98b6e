#!/usr/bin/env python3
"""Load check of the management API behind the web page: a fresh Leveret (child process) with 10,000 queues
(declared through the API) and 1,000 open AMQP connections, then the requests the page makes, timed.

    python bench/console_load.py                      # 10,000 queues, 1,000 connections, 20 rounds
    python bench/console_load.py -q 2000 -c 100 -r 5
    python bench/console_load.py --browser            # and the page itself in headless Chromium

Prints, per request, the median and the slowest time of the rounds and the answer's size: the queue list's
page of 50 (hidden internal queues, sorted by name, then by messages), a filtered page, the overview with
its chart samples, a page of connections; and, for comparison, the whole unpaged queue list. Bounded: every
loop has a fixed count, the broker is stopped at the end. Times depend on the machine and its other load.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rawamqp import RawClient
from serverproc import LeveretProcess

AUTH = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(), "Content-Type": "application/json"}
INTERNAL = r"^(?!amq\.)(?!leveret\.status$)(?!celeryev\.)(?!.*\.(?:retry\.\d+|pidbox)$)"  # as the page's
COLUMNS = "name,vhost,messages_ready,messages_unacknowledged,consumers,type,message_stats"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def declare(http_port: int, names: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
    for name in names:
        conn.request("PUT", f"/api/queues/%2F/{quote(name, safe='')}", body=b"{}", headers=AUTH)
        response = conn.getresponse()
        response.read()
        assert response.status in (201, 204), (name, response.status)
    conn.close()


def timed(conn: http.client.HTTPConnection, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    conn.request("GET", path, headers=AUTH)
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200, (path, response.status, body[:200])
    json.loads(body)
    return elapsed, len(body)


def browser_check(http_port: int, rounds: int) -> None:
    """The page itself in headless Chromium: time from opening the queue list to its rows, and from typing a
    filter to the filtered rows."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page()
            tab.goto(f"http://127.0.0.1:{http_port}/#/login/guest/guest")
            tab.wait_for_selector("#overview:not([hidden])", timeout=60_000)
            opened, filtered = [], []
            for i in range(rounds):
                started = time.perf_counter()
                tab.click("nav a[href='#queues']")
                tab.wait_for_selector("tr[data-queue]", timeout=60_000)
                opened.append(time.perf_counter() - started)
                started = time.perf_counter()
                tab.fill("#queue-filter input[name=name]", f"bench-0{i % 10}99")
                # bench-0N990 .. bench-0N999: ten names, the one ending in 0 is an (internal) retry queue
                expect(tab.locator("#queue-rows tr[data-queue]")).to_have_count(9, timeout=60_000)
                filtered.append(time.perf_counter() - started)
                tab.fill("#queue-filter input[name=name]", "")
                tab.click("nav a[href='#overview']")
                tab.wait_for_selector("#overview:not([hidden])")
            for label, times in (("page: open the queue list", opened), ("page: type a filter", filtered)):
                print(f"{label:48} median {statistics.median(times) * 1000:7.1f} ms   slowest "
                      f"{max(times) * 1000:7.1f} ms")
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--queues", type=int, default=10_000)
    parser.add_argument("-c", "--connections", type=int, default=1_000)
    parser.add_argument("-r", "--rounds", type=int, default=20)
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    args = parser.parse_args()
    http_port = free_port()
    with tempfile.TemporaryDirectory() as data:
        broker = LeveretProcess(Path(data), env={"LEVERET_HTTP_PORT": str(http_port)}).start()
        clients: list[RawClient] = []
        try:
            names = [f"bench-{i:05}" + (".retry.1000" if i % 10 == 0 else "") for i in range(args.queues)]
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda part: declare(http_port, part), [names[i::4] for i in range(4)]))
            print(f"declared {args.queues} queues through the API in {time.monotonic() - started:.1f} s")
            started = time.monotonic()
            for _ in range(args.connections):
                client = RawClient(broker.port, timeout=30)
                client.handshake()
                clients.append(client)
            print(f"opened {args.connections} AMQP connections in {time.monotonic() - started:.1f} s")
            hidden = quote(INTERNAL, safe="")
            requests = {
                "queues page 1 of 50, internal hidden, by name":
                    f"/api/queues/%2F?page=1&page_size=50&sort=name&use_regex=true&name={hidden}&columns={COLUMNS}",
                "queues middle page of 50, by messages desc":
                    f"/api/queues/%2F?page={max(1, args.queues // 100)}&page_size=50&sort=messages&sort_reverse=true"
                    f"&columns={COLUMNS}",
                "queues filtered 'bench-0999', page 1":
                    f"/api/queues/%2F?page=1&page_size=50&name=bench-0999&columns={COLUMNS}",
                "overview with 10 min of samples":
                    "/api/overview?lengths_age=600&lengths_incr=5&msg_rates_age=600&msg_rates_incr=5",
                "connections page 1 of 500": "/api/connections?page=1&page_size=500&sort=name",
                "whole queue list, unpaged (comparison)": "/api/queues",
            }
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=120)
            for label, path in requests.items():
                times, size = [], 0
                for _ in range(args.rounds):
                    elapsed, size = timed(conn, path)
                    times.append(elapsed)
                print(f"{label:48} median {statistics.median(times) * 1000:7.1f} ms   slowest "
                      f"{max(times) * 1000:7.1f} ms   {size / 1024:8.1f} KiB")
            conn.close()
            if args.browser:
                browser_check(http_port, args.rounds)
        finally:
            for client in clients:
                client.close()
            broker.stop()


if __name__ == "__main__":
    main()
