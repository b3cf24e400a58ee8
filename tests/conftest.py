"""Fixtures: plans composed exactly as `dynamo-launch` composes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.plan import LaunchPlan, build_plan
from tests.support import compose_config


@pytest.fixture
def plan_of(tmp_path: Path):
    def plan(*overrides: str) -> LaunchPlan:
        return build_plan(compose_config(*overrides), tmp_path / "run")

    return plan
