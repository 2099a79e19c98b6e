"""``GET /metrics``: the broker's state in Prometheus' text format, with metric names close to those of
RabbitMQ's rabbitmq_prometheus plugin (per-object metrics, as its ``/metrics/per-object`` endpoint)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from leveret.core.broker import Broker, Session, process_rss


class _BrokerCollector:
    def __init__(self, broker: Broker, sessions: list[Session]) -> None:
        self.broker = broker
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        labels = ["vhost", "queue"]
        ready = GaugeMetricFamily("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers",
                                  labels=labels)
        unacked = GaugeMetricFamily("rabbitmq_queue_messages_unacked",
                                    "Messages delivered to consumers but not yet acknowledged", labels=labels)
        messages = GaugeMetricFamily("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages",
                                     labels=labels)
        ready_bytes = GaugeMetricFamily("rabbitmq_queue_messages_ready_bytes", "Size of ready message bodies",
                                        labels=labels)
        consumers = GaugeMetricFamily("rabbitmq_queue_consumers", "Consumers on a queue", labels=labels)
        count = 0
        for vhost in self.broker.vhosts.values():
            for queue in vhost.queues.values():
                key = [vhost.name, queue.name]
                ready.add_metric(key, queue.message_count)
                unacked.add_metric(key, queue.unacked_count)
                messages.add_metric(key, queue.message_count + queue.unacked_count)
                ready_bytes.add_metric(key, queue.ready_bytes)
                consumers.add_metric(key, queue.consumer_count)
                count += 1
        yield from (ready, unacked, messages, ready_bytes, consumers)
        yield GaugeMetricFamily("rabbitmq_queues", "Queues available", value=count)
        yield GaugeMetricFamily("rabbitmq_connections", "Connections currently open", value=len(self.sessions))
        yield GaugeMetricFamily("rabbitmq_channels", "Channels currently open",
                                value=sum(len(s.channels) for s in self.sessions))
        yield GaugeMetricFamily("rabbitmq_consumers", "Consumers currently connected",
                                value=sum(q.consumer_count for v in self.broker.vhosts.values()
                                          for q in v.queues.values()))
        memory = self.broker.memory
        yield GaugeMetricFamily("rabbitmq_process_resident_memory_bytes",
                                "Memory used in bytes (the process's resident set size)", value=process_rss())
        yield GaugeMetricFamily("leveret_messages_memory_bytes",
                                "What the messages held in memory cost (bodies and records), as the memory alarm "
                                "counts it", value=memory.used)
        yield GaugeMetricFamily("rabbitmq_resident_memory_limit_bytes", "Memory high watermark", value=memory.high)
        yield GaugeMetricFamily("rabbitmq_alarms_memory_used_watermark", "1 while the memory alarm is on",
                                value=int(memory.memory_alarm))
        yield GaugeMetricFamily("rabbitmq_alarms_free_disk_space_watermark", "1 while the disk alarm is on",
                                value=int(memory.disk_alarm))
        status = self.broker.status  # the status book (core/status.py)
        yield GaugeMetricFamily("leveret_task_status_cached_records", "Task status records in the book's memory cache",
                                value=status.cached)
        for name, value, text in (
                ("events", status.events, "Task status events recorded from leveret.events"),
                ("events_ignored", status.events_ignored, "Malformed task status events ignored"),
                ("enqueued", status.enqueued, "Queued records made on enqueue into x-leveret-status queues"),
                ("queries", status.queries, "Status queries to amq.leveret.status"),
                ("expired", status.expired, "Expired task status records deleted from the store")):
            yield CounterMetricFamily(f"leveret_task_status_{name}", text, value=value)


def render_metrics(broker: Broker, sessions: list[Session]) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_BrokerCollector(broker, sessions))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
