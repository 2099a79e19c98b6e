"""The one differential runner: every scenario of ``scenarios_<area>.py`` runs against the reference RabbitMQ 3.10
(127.0.0.1:5672) and against a fresh Leveret with the same names, and the two transcripts must be equal, entry by
entry (``harness.py`` says what a transcript holds). Skipped, never faked, when RabbitMQ is not running.

- ``test_same_as_rabbitmq[<area>/<scenario>]``: the comparison.
- ``test_deterministic_on_rabbitmq[<area>/<scenario>]``: for the areas whose scenarios depend on timing (lifecycle,
  corners), the scenario twice against RabbitMQ gives the same transcript, which is what makes the comparison
  meaningful.

Select an area with ``-k``: ``pytest tests/differential -k lifecycle/``.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import require_rabbitmq

import scenarios_basic  # noqa: F401  (importing a scenario module registers its scenarios)
import scenarios_corners  # noqa: F401
import scenarios_lifecycle  # noqa: F401
import scenarios_raw  # noqa: F401
from harness import CHECKED_TWICE, SCENARIOS, assert_deterministic, assert_same_as_rabbitmq


@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_as_rabbitmq(name: str, leveret: Any, unique: str) -> None:  # leveret: the ThreadedServer fixture
    assert_same_as_rabbitmq(SCENARIOS[name], leveret.port, require_rabbitmq(), unique)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", sorted(name for name in SCENARIOS if name.split("/")[0] in CHECKED_TWICE))
def test_deterministic_on_rabbitmq(name: str, rabbitmq_port: int, unique: str) -> None:
    assert_deterministic(SCENARIOS[name], rabbitmq_port, unique)


@pytest.mark.parametrize(("area", "minimum"), [("basic", 45), ("raw", 8), ("lifecycle", 22), ("corners", 13)])
def test_enough_scenarios(area: str, minimum: int) -> None:
    assert sum(name.startswith(f"{area}/") for name in SCENARIOS) >= minimum
