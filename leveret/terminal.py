"""What the ``leveret`` commands print: the one-line error, the log format, and tables.

Shared by :mod:`leveret.cli` and the commands it loads on demand (:mod:`leveret.ctl`, :mod:`leveret.tap`), so
none of them imports another for its output. Standard library only.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def error(message: str) -> None:
    """Print ``leveret: error: <message>`` on stderr, as argparse does for usage errors."""
    print(f"leveret: error: {message}", file=sys.stderr)


def configure_logging(level: str) -> None:
    """Send log records at ``level`` ("debug", "info", ...) and above to stderr in LOG_FORMAT."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def cell(value: Any) -> str:
    """One table cell: None empty, booleans as true/false, a list of strings comma-separated, else JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def print_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None, out: Any = None) -> None:
    """Rows as left-aligned columns under a header line; ``(none)`` when there are none. A column is a key of
    the rows, or ``key=heading``."""
    out = out or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    columns = columns or tuple(rows[0])
    keys = [c.partition("=")[0] for c in columns]
    headings = [c.partition("=")[2] or c for c in columns]
    cells = [[cell(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headings)]
    print("  ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)
