"""Sorting, filtering and paging of the management API's lists, with RabbitMQ's query parameters and answers.

``GET /api/queues?page=2&page_size=50&name=orders&use_regex=false&sort=messages&sort_reverse=true`` answers
``{"filtered_count", "item_count", "items", "page", "page_count", "page_size", "total_count"}`` as RabbitMQ's
management API does (its ``rabbit_mgmt_util`` paging), for the lists RabbitMQ pages: queues, exchanges,
connections, channels and vhosts. Without ``page`` the list is answered as a plain JSON array in the API's own
order (sorted when ``sort`` is given; ``name`` is then ignored, as by RabbitMQ); a page is cut from the list
sorted by vhost and name (RabbitMQ's default order) unless ``sort`` says otherwise.

RabbitMQ's rules, checked against RabbitMQ 3.10 by tests/differential/test_http_paging.py:

- the list is sorted first (``sort`` is a field name, dotted for nested fields such as
  ``message_stats.publish_details.rate``; an unknown field leaves the order as it was; the sort is stable and
  ``sort_reverse=true`` reverses it, any other value does not), then filtered by ``name``: a case-insensitive
  substring, or with ``use_regex=true`` a case-insensitive regular expression searched in the name;
- ``page`` counts from 1, ``page_size`` is 1..500 (default 100); a page past the end is refused with
  ``page_out_of_range`` unless it starts right after the last item (RabbitMQ's ``lists:sublist`` rule), so an
  empty list has a page 1;
- values that are not integers, and a regular expression that does not compile, are ``bad_request``
  "Pagination parameters are invalid" (RabbitMQ answers a non-integer ``page_size`` with a 500; we say 400).

``columns=name,messages`` keeps only those (dotted) fields of each item, as RabbitMQ's ``columns`` parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


class PagingError(Exception):
    """A refused list query: RabbitMQ's error name and reason, answered with status 400."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


def _invalid() -> PagingError:
    return PagingError("bad_request", "Pagination parameters are invalid")


def _integer(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise _invalid() from None


def field(item: Mapping[str, Any], path: str) -> Any:
    """The value of a dotted ``path`` in ``item`` (None where a part is missing)."""
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _order(value: Any) -> tuple[int, Any]:
    """A sort key across types as Erlang's term order: numbers, then missing values, then strings."""
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (0, value)
    if value is None:
        return (1, 0)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True, default=str))


def sort_items(items: list[dict[str, Any]], sort: str | None, reverse: bool) -> list[dict[str, Any]]:
    if sort:
        items = sorted(items, key=lambda item: _order(field(item, sort)))
    if reverse:
        items = items[::-1]
    return items


def _matcher(name: str, use_regex: bool) -> Any:
    if use_regex:
        try:
            pattern = re.compile(name, re.IGNORECASE)
        except re.error:
            raise _invalid() from None
        return lambda value: pattern.search(value) is not None
    needle = name.lower()
    return lambda value: needle in value.lower()


def _columns(items: list[dict[str, Any]], columns: str) -> list[dict[str, Any]]:
    paths = [c for c in columns.split(",") if c]
    result = []
    for item in items:
        kept: dict[str, Any] = {}
        for path in paths:
            parts = path.split(".")
            value: Any = item
            for part in parts:
                if not isinstance(value, Mapping) or part not in value:
                    break
                value = value[part]
            else:
                target = kept
                for part in parts[:-1]:
                    target = target.setdefault(part, {})
                target[parts[-1]] = value
        result.append(kept)
    return result


def page_of(items: Sequence[Any], query: Mapping[str, str],
            view: Callable[[Any], dict[str, Any]] | None = None) -> list[dict[str, Any]] | dict[str, Any]:
    """``items`` sorted, filtered and cut to one page as ``query`` (a request's query parameters) asks.
    Raises :class:`PagingError` for values RabbitMQ refuses.

    ``view``: ``items`` are objects with a ``name`` and a ``vhost.name`` (queues) and ``view(item)`` is the
    JSON object of one; a page sorted by name or vhost (or in the default order) is then sorted and filtered
    on those two alone and only its own items are viewed, so a page of 50 out of 10,000 queues costs 50 views."""
    columns = query.get("columns")
    if "page" not in query:
        listed = [view(i) for i in items] if view is not None else list(items)
        listed = sort_items(listed, query.get("sort"), query.get("sort_reverse") == "true")
        return _columns(listed, columns) if columns else listed
    page = _integer(query.get("page"))
    size = _integer(query.get("page_size"))
    if page is None or page < 1 or (size is not None and not 1 <= size <= MAX_PAGE_SIZE):
        raise PagingError("invalid_pagination_parameters", f"Invalid pagination parameters: page number {page}, "
                                                           f"page size {'undefined' if size is None else size}")
    size = DEFAULT_PAGE_SIZE if size is None else size
    sort = query.get("sort")
    light = view is not None and sort in (None, "", "name", "vhost")
    if view is None:
        rows = [(item, item) for item in items]
    elif light:
        rows = [({"name": item.name, "vhost": item.vhost.name}, item) for item in items]
    else:
        rows = [(view(item), item) for item in items]
    # a page is cut from the list in RabbitMQ's default order (vhost, then name) unless ``sort`` says otherwise
    rows.sort(key=lambda row: (_order(row[0].get("vhost")), _order(row[0].get("name"))))
    if sort:
        rows.sort(key=lambda row: _order(field(row[0], sort)))
    if query.get("sort_reverse") == "true":
        rows.reverse()
    name = query.get("name")
    if name:
        matches = _matcher(name, query.get("use_regex") == "true")
        filtered = [row for row in rows if isinstance(row[0].get("name"), str) and matches(row[0]["name"])]
    else:
        filtered = rows
    start = (page - 1) * size
    if start > len(filtered):
        raise PagingError("page_out_of_range", f"Page out of range, page: {page} page size: {size}, "
                                               f"len: {len(filtered)}")
    chosen = [view(item) if light and view is not None else info for info, item in filtered[start:start + size]]
    return {"filtered_count": len(filtered), "item_count": len(chosen),
            "items": _columns(chosen, columns) if columns else chosen, "page": page,
            "page_count": -(-len(filtered) // size), "page_size": size, "total_count": len(rows)}


def paged(request: web.Request, items: Sequence[Any], reply: Callable[[Any, int], web.Response],
          view: Callable[[Any], dict[str, Any]] | None = None) -> web.Response:
    """The HTTP answer of a list handler: the list (or one page of it) or RabbitMQ's 400, encoded by the API's
    ``reply(value, status)``; ``view`` as for :func:`page_of`."""
    try:
        return reply(page_of(items, request.query, view), 200)
    except PagingError as exc:
        return reply({"error": exc.error, "reason": exc.reason}, 400)
