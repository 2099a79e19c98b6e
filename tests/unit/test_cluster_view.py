"""The cluster view's pieces (leveret/management/cluster.py), without sockets: a node's summary of what it serves,
and how another node's API merges the summaries it read from the store. The whole path between two nodes on
PostgreSQL is tests/integration/test_cluster.py's test_the_management_api_of_any_node_shows_the_whole_cluster."""

from __future__ import annotations

import json

from leveret.management import cluster
from leveret.management.context import Management
from leveret.management.views import queue_info
from tests.support.corekit import Core


def management(core: Core) -> Management:
    return Management(core.broker, sessions=lambda: [c.session for c in core.clients],
                      listeners=lambda: [{"protocol": "amqp", "ip_address": "127.0.0.1", "port": 5672}])


def test_a_summary_lists_the_served_queues_and_connections_with_totals_and_is_json() -> None:
    core = Core()
    client = core.client()
    client.declare("jobs", durable=True)
    for n in range(3):
        client.publish("jobs", b"m%d" % n)
    client.consume("jobs", "c1", no_ack=False)  # every message delivered: unacked
    client.declare("other")
    client.publish("other", b"x")
    found = json.loads(json.dumps(cluster.summary(management(core)), default=str))  # as the store keeps it
    queues = {e[1]: e for e in found["queues"]}
    assert queues["jobs"][:6] == ["/", "jobs", 0, 3, 1, True]
    assert queues["other"][:6] == ["/", "other", 1, 0, 0, False]
    assert [c["user"] for c in found["connections"]] == ["guest"]
    assert found["totals"] == {"queues": 2, "connections": 1, "channels": 1, "consumers": 1,
                               "messages_ready": 1, "messages_unacknowledged": 3}


def test_another_nodes_figures_replace_the_zeros_of_a_queue_it_serves() -> None:
    core = Core()
    core.client().declare("jobs", durable=True)
    queue = core.queue("jobs")
    queue.served_by = "node-a"  # as on a node that does not own it
    summaries = {"node-a": {"queues": [["/", "jobs", 4, 2, 1, True, False, False, {}],
                                       ["/", "local-a", 1, 0, 0, False, False, False, {"x-max-length": 5}]],
                            "connections": [{"name": "c -> a", "node": "node-a", "user": "guest", "vhost": "/"}],
                            "totals": {"queues": 2, "connections": 1, "messages_ready": 5}},
                 "node-c": {"totals": {"connections": 2, "messages_ready": 1}}}
    shown = cluster.with_owner_figures(queue_info(queue, "node-b", management(core).rates),
                                       cluster.queue_figures(summaries))
    assert (shown["node"], shown["messages"], shown["messages_ready"], shown["messages_unacknowledged"],
            shown["consumers"]) == ("node-a", 6, 4, 2, 1)
    remote = cluster.remote_queues(summaries, [core.vhost])  # the queues this node does not know only
    assert [(q["name"], q["node"], q["messages"], q["arguments"]) for q in remote] == [
        ("local-a", "node-a", 1, {"x-max-length": 5})]
    assert cluster.remote_connections(summaries) == summaries["node-a"]["connections"]
    assert cluster.totals(summaries) == {"queues": 2, "connections": 3, "messages_ready": 6}


def test_without_a_cluster_there_are_no_other_nodes() -> None:
    assert cluster.others(Core().broker) == {}
