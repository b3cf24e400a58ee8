"""Running a launch plan: children, health, restarts, ordered stop."""

from orchestrator.supervisor.supervisor import Supervisor

__all__ = ["Supervisor"]
