"""Leveret: an AMQP 0-9-1 message broker in Python, meant to be a drop-in for RabbitMQ."""

__version__ = "0.1.0"

# The RabbitMQ version whose behaviour Leveret implements (and is checked against by the differential tests):
# what clients see as server-properties.version and the management API's rabbitmq_version, because clients and
# tools gate features on it. Leveret's own version is __version__ (server-properties product/information and
# leveret-version). See docs/compatibility.md.
RABBITMQ_VERSION = "3.10.8"


def build() -> str:
    """Which code runs: ``"compiled with mypyc"`` when the hot path is the C extensions that ``pip install .`` builds
    with mypyc (setup.py), else ``"pure Python"`` (docs/performance.md, "Compiled with mypyc"). Shown by
    ``leveret --version`` and logged at start."""
    import importlib.util

    spec = importlib.util.find_spec("leveret.amqp.connection")  # one of setup.py's COMPILED: all or none are
    origin = spec.origin if spec is not None else None
    return "compiled with mypyc" if origin is not None and not origin.endswith(".py") else "pure Python"
