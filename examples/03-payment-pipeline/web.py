"""The web front end: POST /checkout stores the order, sends the first tasks and answers at once (202).

    python web.py          # http://127.0.0.1:8080 (WEB_PORT to change it)

    curl -s -XPOST localhost:8080/checkout -d '{"user": "ann", "email": "ann@example.com", "amount": 25}'
    curl -s localhost:8080/orders/1        # each step of the order and the state of its task
    curl -s localhost:8080/jobs/<task id>  # one task's state: queued, started, retrying, succeeded, ...
"""

import asyncio
import os
from contextlib import closing

from aiohttp import web

from shop import app, confirm_payment, create_invoice, db, now, record_job

STEPS = ["create_invoice", "send_invoice_email", "confirm_payment", "refresh_wallet", "update_stats"]


async def checkout(request: web.Request) -> web.Response:
    data = await request.json()
    with closing(db()) as conn, conn:  # (a tiny local write; a real app would use an async driver)
        order_id = conn.execute("INSERT INTO orders (user, email, amount, created) VALUES (?, ?, ?, ?)",
                                (data["user"], data["email"], float(data["amount"]), now())).lastrowid
    # Two tasks, each one publish; the rest of the pipeline is chained by the tasks themselves.
    invoice = await create_invoice.send_async(order_id=order_id)
    payment = await confirm_payment.send_async(order_id=order_id)
    record_job(order_id, "create_invoice", invoice.id)
    record_job(order_id, "confirm_payment", payment.id)
    return web.json_response({"order": order_id, "jobs": {"create_invoice": invoice.id,
                                                          "confirm_payment": payment.id}}, status=202)


async def order_status(request: web.Request) -> web.Response:
    order_id = int(request.match_info["order_id"])
    with closing(db()) as conn:
        order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        if order is None:
            raise web.HTTPNotFound()
        jobs = dict(conn.execute("SELECT step, task_id FROM jobs WHERE order_id = ?", (order_id,)).fetchall())
    steps = {}
    for step in STEPS:  # a step's task is known once the step before it has sent it
        task_id = jobs.get(step)
        steps[step] = {"task": task_id, "state": await app.status_async(task_id) if task_id else "not sent yet"}
    return web.json_response({"order": dict(order), "steps": steps})


async def job_status(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["task_id"],
                              "state": await app.status_async(request.match_info["task_id"])})


async def close_tasks(_: web.Application) -> None:
    await asyncio.to_thread(app.close)  # the task App's connection


def make_web_app() -> web.Application:
    web_app = web.Application()
    web_app.add_routes([web.post("/checkout", checkout), web.get("/orders/{order_id}", order_status),
                        web.get("/jobs/{task_id}", job_status)])
    web_app.on_cleanup.append(close_tasks)
    return web_app


if __name__ == "__main__":
    web.run_app(make_web_app(), host="127.0.0.1", port=int(os.environ.get("WEB_PORT", "8080")))
