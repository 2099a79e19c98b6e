"""Leveret's task layer: a client library for any AMQP 0-9-1 broker (Leveret or RabbitMQ). See docs/tasks.md."""

from leveret.tasks.app import App, BrokerUnavailable, Group, Handle, Request, StatusUnavailable, Task, TaskError
from leveret.tasks.canvas import chain, chord, group, signature
from leveret.tasks.periodic import Scheduler, periodic
from leveret.tasks.pipeline import Pipeline, PipelineError
from leveret.tasks.retry import Retry
from leveret.tasks.worker import TaskContext, Worker

__all__ = ["App", "BrokerUnavailable", "Group", "Handle", "Pipeline", "PipelineError", "Request", "Retry",
           "Scheduler", "StatusUnavailable", "Task", "TaskContext", "TaskError", "Worker", "chain", "chord", "group",
           "periodic", "signature"]
