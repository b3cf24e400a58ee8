"""The launch plan: from a typed config to the processes of a deployment."""

from orchestrator.plan.build import build_plan
from orchestrator.plan.plan import LaunchPlan, ProcessSpec

__all__ = ["LaunchPlan", "ProcessSpec", "build_plan"]
