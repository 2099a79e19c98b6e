"""Sorting, filtering and paging of the management API's lists (``page``, ``page_size``, ``name``, ``use_regex``,
``sort``, ``sort_reverse``, ``columns``): the same requests against a real Leveret and against RabbitMQ's
management API on 127.0.0.1:15672 (skipped where it is absent), each in a fresh vhost; then the paging
function alone."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from leveret.config import Config
from leveret.http.paging import PagingError, page_of
from leveret.node import ThreadedServer

from httphelp import RABBITMQ_HTTP_PORT, Client, rabbitmq_management

NAMES = ["Orders.b", "orders.a", "invoices", "orders.retry.500", "celeryev.abc", "zeta", "alpha-orders"]


@pytest.fixture(params=["leveret", "rabbitmq"])
def api(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Iterator[Client]:
    if request.param == "rabbitmq":
        if not rabbitmq_management():
            pytest.skip("no RabbitMQ management API on 127.0.0.1:15672")
        yield Client(RABBITMQ_HTTP_PORT)
        return
    server = ThreadedServer(make_config(http_port=0)).start()
    try:
        yield Client(server.http_port)
    finally:
        server.stop()


@pytest.fixture
def vhost(api: Client) -> Iterator[str]:
    """A fresh vhost holding the queues of NAMES, the n-th with n messages' worth of max-length argument."""
    name = f"page-{uuid.uuid4().hex[:8]}"
    api.ok("PUT", f"/api/vhosts/{name}")
    try:
        for i, queue in enumerate(NAMES):
            api.ok("PUT", f"/api/queues/{name}/{queue}", {"durable": True, "arguments": {"x-max-length": 100 - i}})
            api.ok("PUT", f"/api/exchanges/{name}/x-{queue}", {"type": "topic" if i % 2 else "direct"})
        yield name
    finally:
        api.request("DELETE", f"/api/vhosts/{name}")


def names(value: Any) -> list[str]:
    items = value["items"] if isinstance(value, dict) else value
    return [item["name"] for item in items]


def counts(value: dict[str, Any]) -> tuple[int, ...]:
    return tuple(value[k] for k in ("filtered_count", "item_count", "page", "page_count", "page_size", "total_count"))


def test_a_page_has_rabbitmqs_shape_and_default_order(api: Client, vhost: str) -> None:
    value = api.get(f"/api/queues/{vhost}?page=1&page_size=3")
    assert set(value) == {"filtered_count", "item_count", "items", "page", "page_count", "page_size", "total_count"}
    assert counts(value) == (7, 3, 1, 3, 3, 7)
    assert names(value) == ["Orders.b", "alpha-orders", "celeryev.abc"]  # by name, bytewise (upper case first)
    last = api.get(f"/api/queues/{vhost}?page=3&page_size=3")
    assert counts(last) == (7, 1, 3, 3, 3, 7) and names(last) == ["zeta"]
    assert counts(api.get(f"/api/queues/{vhost}?page=1")) == (7, 7, 1, 1, 100, 7)


def test_name_filter_is_a_case_insensitive_substring_or_regex(api: Client, vhost: str) -> None:
    plain = api.get(f"/api/queues/{vhost}?page=1&name=ORDERS")
    assert names(plain) == ["Orders.b", "alpha-orders", "orders.a", "orders.retry.500"]
    assert counts(plain)[:2] == (4, 4) and plain["total_count"] == 7
    regex = api.get(f"/api/queues/{vhost}?page=1&name=%5Eorders%5C.&use_regex=true")  # ^orders\.
    assert names(regex) == ["Orders.b", "orders.a", "orders.retry.500"]
    # the page's "hide internal queues": a negative lookahead, understood by both
    hidden = api.get(f"/api/queues/{vhost}?page=1&use_regex=true&name="  # ^(?!celeryev\.)(?!.*\.retry\.\d+$)
                     "%5E%28%3F%21celeryev%5C.%29%28%3F%21.%2A%5C.retry%5C.%5Cd%2B%24%29")
    assert names(hidden) == ["Orders.b", "alpha-orders", "invoices", "orders.a", "zeta"]
    assert names(api.get(f"/api/queues/{vhost}?page=1&name=%5Eorders&use_regex=yes")) == []  # only "true" is true


def test_sort_by_a_field_a_nested_field_and_reversed(api: Client, vhost: str) -> None:
    by_length = api.get(f"/api/queues/{vhost}?page=1&page_size=3&sort=arguments.x-max-length")
    assert names(by_length) == ["alpha-orders", "zeta", "celeryev.abc"]  # x-max-length 94, 95, 96
    reverse = api.get(f"/api/queues/{vhost}?page=1&page_size=2&sort=name&sort_reverse=true")
    assert names(reverse) == ["zeta", "orders.retry.500"]
    unknown = api.get(f"/api/queues/{vhost}?page=1&page_size=2&sort=no-such-field")
    assert names(unknown) == ["Orders.b", "alpha-orders"]
    assert names(api.get(f"/api/queues/{vhost}?page=1&page_size=2&sort=name&sort_reverse=false")) == \
        ["Orders.b", "alpha-orders"]
    exchanges = api.get(f"/api/exchanges/{vhost}?page=1&name=x-&sort=type&columns=name,type")
    assert [(x["name"], x["type"]) for x in exchanges["items"]][:4] == \
        [("x-Orders.b", "direct"), ("x-alpha-orders", "direct"), ("x-celeryev.abc", "direct"), ("x-invoices", "direct")]
    assert all(set(x) == {"name", "type"} for x in exchanges["items"])


def test_without_page_the_list_is_plain_and_name_is_ignored(api: Client, vhost: str) -> None:
    value = api.get(f"/api/queues/{vhost}?name=zeta&sort=name&sort_reverse=true")
    assert isinstance(value, list) and names(value)[:2] == ["zeta", "orders.retry.500"] and len(value) == 7
    assert isinstance(api.get(f"/api/queues/{vhost}?page_size=2"), list)


@pytest.mark.parametrize(("query", "error", "reason"), [
    ("page=0", "invalid_pagination_parameters", "Invalid pagination parameters: page number 0, page size undefined"),
    ("page=-1", "invalid_pagination_parameters", "Invalid pagination parameters: page number -1, page size undefined"),
    ("page=1&page_size=0", "invalid_pagination_parameters",
     "Invalid pagination parameters: page number 1, page size 0"),
    ("page=1&page_size=501", "invalid_pagination_parameters",
     "Invalid pagination parameters: page number 1, page size 501"),
    ("page=abc", "bad_request", "Pagination parameters are invalid"),
    ("page=1&name=%28&use_regex=true", "bad_request", "Pagination parameters are invalid"),
    ("page=3&page_size=3&name=orders", "page_out_of_range", "Page out of range, page: 3 page size: 3, len: 4"),
    ("page=2&name=nothing-matches", "page_out_of_range", "Page out of range, page: 2 page size: 100, len: 0"),
])
def test_refused_values(api: Client, vhost: str, query: str, error: str, reason: str) -> None:
    status, value, _ = api.request("GET", f"/api/queues/{vhost}?{query}")
    assert (status, value) == (400, {"error": error, "reason": reason})


def test_pages_at_the_end(api: Client, vhost: str) -> None:
    empty_after = api.get(f"/api/queues/{vhost}?page=3&page_size=2&name=orders")  # starts right after the last
    assert counts(empty_after) == (4, 0, 3, 2, 2, 7) and empty_after["items"] == []
    nothing = api.get(f"/api/queues/{vhost}?page=1&name=nothing-matches")
    assert counts(nothing) == (0, 0, 1, 0, 100, 7)


def test_vhosts_connections_and_channels_are_paged(api: Client, vhost: str) -> None:
    value = api.get(f"/api/vhosts?page=1&name={vhost}")
    assert names(value) == [vhost] and value["filtered_count"] == 1
    for path in ("connections", "channels"):
        paged = api.get(f"/api/{path}?page=1&page_size=2")
        assert paged["page"] == 1 and paged["page_size"] == 2 and isinstance(paged["items"], list)


# --- the function alone ----------------------------------------------------------------------------------


def test_page_of_sorts_mixed_values_as_erlang_terms() -> None:
    items = [{"name": "a", "v": "text"}, {"name": "b"}, {"name": "c", "v": 2}, {"name": "d", "v": 1.5}]
    assert [i["name"] for i in page_of(items, {"sort": "v"})] == ["d", "c", "b", "a"]  # numbers, missing, text


def test_page_of_columns_keeps_nested_fields() -> None:
    items = [{"name": "q", "message_stats": {"publish": 3, "ack": 1}, "other": 1}]
    assert page_of(items, {"columns": "name,message_stats.publish,absent"}) == \
        [{"name": "q", "message_stats": {"publish": 3}}]


def test_page_of_refuses_a_page_size_that_is_not_a_number() -> None:
    with pytest.raises(PagingError, match="Pagination parameters are invalid"):
        page_of([], {"page": "1", "page_size": "ten"})


def test_page_of_objects_views_only_the_page_when_sorted_by_name() -> None:
    from types import SimpleNamespace

    objects = [SimpleNamespace(name=f"q{i:02}", vhost=SimpleNamespace(name="/"), size=i % 3) for i in range(30)]
    viewed: list[str] = []

    def view(obj: Any) -> dict[str, Any]:
        viewed.append(obj.name)
        return {"name": obj.name, "vhost": obj.vhost.name, "size": obj.size}

    query = {"page": "2", "page_size": "5", "name": "q1", "sort_reverse": "true"}
    page = page_of(objects, query, view)
    assert isinstance(page, dict) and [i["name"] for i in page["items"]] == ["q14", "q13", "q12", "q11", "q10"]
    assert sorted(viewed) == ["q10", "q11", "q12", "q13", "q14"]  # only the page's five
    assert page == page_of([view(o) for o in objects], query)  # the same answer as from the whole list
    by_size = {"page": "1", "page_size": "4", "sort": "size"}
    assert page_of(objects, by_size, view) == page_of([view(o) for o in objects], by_size)
