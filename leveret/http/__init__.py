"""The management HTTP API and web page (leveret/http/server.py starts it; aiohttp is loaded at its first use)."""

import time

STARTED = time.monotonic()  # when the node loaded its management side, at its start: the node's uptime starts here
