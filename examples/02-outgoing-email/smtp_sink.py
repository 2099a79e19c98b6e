"""A local SMTP server to try the mail worker with (needs `pip install aiosmtpd`): prints every mail it accepts.

    python smtp_sink.py [--port 8025] [--fail-first 2]

--fail-first N answers "451 try again later" to the first N mails; recipients at unreachable.example are
always refused with 451, so their mails are retried until the worker gives up.
"""

import argparse
import email
import email.policy
import signal
import threading

from aiosmtpd.controller import Controller


class FlakySink:
    """aiosmtpd handler: keeps what it accepted in ``delivered`` as (envelope sender, recipients, message)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.transactions = 0
        self.delivered: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@unreachable.example"):
            return "451 4.4.1 unreachable.example: no answer from its mail server"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.transactions += 1
        if self.transactions <= self.fail_first:
            return "451 4.3.0 Temporary failure, please try again later"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.delivered.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        print(f"smtp: delivered {message['Subject']!r} from <{envelope.mail_from}> to {', '.join(envelope.rcpt_tos)}",
              flush=True)
        return "250 OK: queued"


def start(port: int = 8025, fail_first: int = 0) -> tuple[Controller, FlakySink]:
    sink = FlakySink(fail_first)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, sink


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a local SMTP sink that can fail on purpose")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--fail-first", type=int, default=0)
    args = parser.parse_args()
    controller, _ = start(args.port, args.fail_first)
    print(f"smtp: listening on 127.0.0.1:{args.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()
