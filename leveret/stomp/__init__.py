"""STOMP 1.0, 1.1 and 1.2, sans-IO, standard library only: frames and their escaping (frames.py), one connection's
parser and writer (connection.py), and RabbitMQ's mapping of headers to AMQP properties and of destinations
(mapping.py). The asyncio adapter that joins it to the core is leveret/server/stomp.py."""

from .connection import StompConnection
from .frames import VERSIONS, Frame, FrameError, serialize
from .mapping import Destination, DestinationError, HeaderError, format_destination, parse_destination

__all__ = ["VERSIONS", "Destination", "DestinationError", "Frame", "FrameError", "HeaderError", "StompConnection",
           "format_destination", "parse_destination", "serialize"]
