"""Leveret: an AMQP 0-9-1 message broker in Python, meant to be a drop-in for RabbitMQ."""

__version__ = "0.1.0"
