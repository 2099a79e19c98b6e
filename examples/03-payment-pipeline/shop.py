"""The shop's tasks. A checkout becomes two chains of small tasks, each on its own queue:

    create_invoice  ──sends──►  send_invoice_email
    confirm_payment ──sends──►  refresh_wallet, update_stats

Each task does one thing and is safe to run twice (a retry, or a redelivery after a worker died): the database
writes are idempotent. Run the worker with `leveret worker shop:app` from this directory.
"""

import os
import sqlite3
from contextlib import closing
from datetime import UTC, datetime

from leveret.tasks import App, Retry

URL = os.environ.get("LEVERET_URL", "amqp://guest:guest@127.0.0.1:5672/")
DB = os.environ.get("SHOP_DB", "shop.db")
FLAKY_PROVIDER = os.environ.get("PAYMENT_PROVIDER_FLAKY") == "1"  # demo: the first confirmation times out

app = App(URL, name="shop")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, user TEXT, email TEXT, amount REAL, created TEXT);
CREATE TABLE IF NOT EXISTS jobs (order_id INTEGER, step TEXT, task_id TEXT, PRIMARY KEY (order_id, step));
CREATE TABLE IF NOT EXISTS invoices (order_id INTEGER PRIMARY KEY, amount REAL, created TEXT);
CREATE TABLE IF NOT EXISTS payments (order_id INTEGER PRIMARY KEY, amount REAL, confirmed TEXT);
CREATE TABLE IF NOT EXISTS wallets (user TEXT PRIMARY KEY, paid_total REAL, orders INTEGER);
CREATE TABLE IF NOT EXISTS stats (day TEXT PRIMARY KEY, orders INTEGER, revenue REAL);
CREATE TABLE IF NOT EXISTS emails (order_id INTEGER PRIMARY KEY, recipient TEXT, sent TEXT);
"""


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(DB, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.executescript(SCHEMA)
    return conn


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_job(order_id: int, step: str, task_id: str) -> None:
    """Remember which task does which step of an order, for the order's status page."""
    with closing(db()) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", (order_id, step, task_id))


@app.task(name="shop.create_invoice", queue="shop.invoices")
def create_invoice(order_id: int) -> None:
    with closing(db()) as conn, conn:
        order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        conn.execute("INSERT OR IGNORE INTO invoices VALUES (?, ?, ?)", (order_id, order["amount"], now()))
    print(f"shop: invoice for order {order_id} created", flush=True)
    # The chain: this task sends the next one once its own work is committed.
    record_job(order_id, "send_invoice_email", send_invoice_email.send(order_id=order_id).id)


@app.task(name="shop.send_invoice_email", queue="shop.emails", retry=Retry.intervals([60, 600, 3600]))
def send_invoice_email(order_id: int) -> None:
    with closing(db()) as conn, conn:
        order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        if conn.execute("SELECT 1 FROM emails WHERE order_id = ?", (order_id,)).fetchone():
            return  # already sent (this is a redelivery): never twice
        # ... here: the mail task of examples/02-outgoing-email, or your mailer
        conn.execute("INSERT INTO emails VALUES (?, ?, ?)", (order_id, order["email"], now()))
    print(f"shop: invoice e-mail for order {order_id} sent to {order['email']}", flush=True)


attempts: dict[int, int] = {}


@app.task(name="shop.confirm_payment", queue="shop.payments", retry=Retry.intervals([1, 5, 30, 300]))
def confirm_payment(order_id: int) -> None:
    attempts[order_id] = attempts.get(order_id, 0) + 1
    if FLAKY_PROVIDER and attempts[order_id] == 1:
        raise TimeoutError("the payment provider did not answer")  # retried 1 s later
    with closing(db()) as conn, conn:
        order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        conn.execute("INSERT OR IGNORE INTO payments VALUES (?, ?, ?)", (order_id, order["amount"], now()))
    print(f"shop: payment for order {order_id} confirmed", flush=True)
    record_job(order_id, "refresh_wallet", refresh_wallet.send(user=order["user"]).id)
    record_job(order_id, "update_stats", update_stats.send(day=order["created"][:10]).id)


@app.task(name="shop.refresh_wallet", queue="shop.wallets")
def refresh_wallet(user: str) -> None:
    with closing(db()) as conn, conn:  # recomputed from the payments: running it twice changes nothing
        conn.execute("""INSERT OR REPLACE INTO wallets
                        SELECT o.user, SUM(p.amount), COUNT(*) FROM payments p JOIN orders o ON o.id = p.order_id
                        WHERE o.user = ? GROUP BY o.user""", (user,))
    print(f"shop: wallet of {user} refreshed", flush=True)


@app.task(name="shop.update_stats", queue="shop.stats")
def update_stats(day: str) -> None:
    with closing(db()) as conn, conn:
        conn.execute("""INSERT OR REPLACE INTO stats
                        SELECT substr(o.created, 1, 10), COUNT(*), SUM(p.amount)
                        FROM payments p JOIN orders o ON o.id = p.order_id
                        WHERE substr(o.created, 1, 10) = ? GROUP BY 1""", (day,))
    print(f"shop: stats of {day} updated", flush=True)
