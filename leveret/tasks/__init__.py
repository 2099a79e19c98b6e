"""Leveret's task layer: a client library for any AMQP 0-9-1 broker (Leveret or RabbitMQ). See docs/tasks.md."""

from leveret.tasks.app import App, Group, Handle, Request, Task, TaskError
from leveret.tasks.retry import Retry
from leveret.tasks.worker import TaskContext, Worker

__all__ = ["App", "Group", "Handle", "Request", "Retry", "Task", "TaskContext", "TaskError", "Worker"]
