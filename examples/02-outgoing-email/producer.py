"""Queue one e-mail and return at once, as a web request would; prints the task id.

    python producer.py bob@example.com --subject "Your order" --body "Thanks!" --from alice@example.com
"""

import argparse

from mail import app, send_email

parser = argparse.ArgumentParser(description="queue an e-mail for the mail worker")
parser.add_argument("to")
parser.add_argument("--subject", default="Hello")
parser.add_argument("--body", default="Sent through Leveret.")
parser.add_argument("--from", dest="sender", default="alice@example.com")
args = parser.parse_args()

handle = send_email.send(sender=args.sender, to=args.to, subject=args.subject, body=args.body)
print("queued", handle.id)  # `leveret status <id>` tells how it went
app.close()
