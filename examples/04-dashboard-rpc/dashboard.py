"""The dashboard: four requests sent at once, other work meanwhile, then every answer gathered with one
timeout. What did not answer in time is shown as unavailable; the rest of the page is rendered anyway.

    python dashboard.py --user 7 --timeout 1.5
"""

import argparse
import asyncio

from leveret.tasks import TaskError

from services import active_ads, app, messages, observed_ads, recommendations


async def load_profile(user: int) -> dict:
    await asyncio.sleep(0.05)  # stands for the page's own work: session, profile from the local database, ...
    return {"id": user, "name": f"user {user}"}


async def dashboard(user: int, timeout: float) -> None:
    sections = {"active ads": active_ads, "observed ads": observed_ads, "recommendations": recommendations,
                "messages": messages}
    # Sent at once, each with its own correlation id; the replies come back on one reply-to address.
    answers = asyncio.ensure_future(app.gather([task.request(user=user) for task in sections.values()],
                                               timeout=timeout, return_exceptions=True))
    profile = await load_profile(user)  # ... while the services work
    print(f"dashboard of {profile['name']}")
    for title, answer in zip(sections, await answers, strict=True):
        if isinstance(answer, TimeoutError):
            print(f"  {title}: unavailable (no answer within {timeout} s)")
        elif isinstance(answer, TaskError):
            print(f"  {title}: unavailable ({answer.remote_type}: {answer.remote_message})")
        else:
            print(f"  {title}: {answer}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="gather four services' answers with one timeout")
    parser.add_argument("--user", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1.5)
    args = parser.parse_args()
    try:
        asyncio.run(dashboard(args.user, args.timeout))
    finally:
        app.close()
