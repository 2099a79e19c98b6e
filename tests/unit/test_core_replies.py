"""Direct reply-to addresses name their node (core/replies.py): what a node of a cluster routes a reply by."""

from __future__ import annotations

from leveret.core.replies import REPLY_TO, node_of, reply_address


def test_an_address_names_its_node_and_is_new_each_time() -> None:
    for node in ("node-a", "leveret@host:5672", "nœud"):
        first, second = reply_address(node), reply_address(node)
        assert first != second and first.startswith(REPLY_TO + ".")
        assert node_of(first) == node_of(second) == node
        assert "." not in first[len(REPLY_TO) + 1:].partition(".")[2]  # the token has no dot


def test_what_is_not_an_address_of_a_node() -> None:
    for address in (REPLY_TO, REPLY_TO + ".", f"{REPLY_TO}.zz.token", f"{REPLY_TO}.6e6f6465", f"{REPLY_TO}.ff.tok",
                    f"{REPLY_TO}.6e6f6465."):
        assert node_of(address) is None, address
