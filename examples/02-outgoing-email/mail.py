"""The mail task: send one e-mail through SMTP, retried for hours when the server is unreachable or answers
"try again later"; the sender is told when delivery is late and when it failed, as an SMTP server does.

Producers (producer.py, producer.php, your web application) queue `mail.send`; worker.py runs it.
"""

import os
import smtplib
import socket
from email.message import EmailMessage

from leveret.tasks import App, Retry, TaskContext

URL = os.environ.get("LEVERET_URL", "amqp://guest:guest@127.0.0.1:5672/")
SMTP_HOST = os.environ.get("SMTP_HOST", "127.0.0.1")
SMTP_PORT = int(os.environ.get("SMTP_PORT", "8025"))

# Seconds to wait before each new attempt: 1 min, 5 min, 1 h, 6 h, then give up (5 attempts over ~7 hours).
# Producers and the worker must agree on it (on Leveret it becomes the queue's x-retry-intervals).
RETRY_INTERVALS = [float(s) for s in os.environ.get("MAIL_RETRY_INTERVALS", "60,300,3600,21600").split(",")]
# After this many failed attempts the sender gets a "delivery delayed" warning (here: after about an hour).
WARN_AFTER = int(os.environ.get("MAIL_WARN_AFTER", "4"))
MAILER_DAEMON = os.environ.get("MAILER_DAEMON", f"MAILER-DAEMON@{socket.gethostname()}")

app = App(URL, name="mail")


@app.task(name="mail.send", queue="outgoing-email", retry=Retry.intervals(RETRY_INTERVALS))
def send_email(sender: str, to: str, subject: str, body: str, notice: bool = False) -> None:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    print(f"mail: sending {subject!r} to {to}", flush=True)
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT, timeout=60) as smtp:
        # Notices go out with the null sender <>, as bounces do: nobody answers them with another notice.
        smtp.send_message(message, from_addr="" if notice else sender)
    # Any exception above (refused connection, 4xx answer, timeout) fails this attempt: it is retried later.


@send_email.on_failure
def tell_the_sender(ctx: TaskContext, exc: Exception) -> None:
    """Runs in the worker after every failed attempt (ctx.will_retry says whether another one follows)."""
    mail, failures = ctx.payload, ctx.attempt + 1
    print(f"mail: attempt {failures} to {mail['to']} failed: {exc}"
          + (f"; next attempt at {ctx.next_attempt_at}" if ctx.will_retry else "; giving up"), flush=True)
    if mail.get("notice"):
        return  # a notice that cannot be delivered is dropped, never answered by another notice
    if ctx.will_retry and failures == WARN_AFTER:
        subject = f"Delivery delayed: {mail['subject']}"
        text = (f"THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.\n\n"
                f"Your message to <{mail['to']}> could not be delivered yet ({failures} attempts).\n"
                f"Last error: {exc}\nThe mail system will keep trying ({len(RETRY_INTERVALS) + 1} attempts in all).\n")
    elif not ctx.will_retry:
        subject = f"Undelivered Mail Returned to Sender: {mail['subject']}"
        text = (f"Your message could not be delivered to one or more recipients.\n\n"
                f"<{mail['to']}>: {exc} (gave up after {failures} attempts)\n\n"
                f"--- the original message ---\nTo: {mail['to']}\nSubject: {mail['subject']}\n\n{mail['body']}\n")
    else:
        return
    send_email.send(sender=MAILER_DAEMON, to=mail["sender"], subject=subject, body=text, notice=True)
