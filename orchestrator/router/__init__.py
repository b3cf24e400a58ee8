"""Routing: which worker (and DP rank) serves a request."""

from orchestrator.router.base import Candidate, Router, make_router

__all__ = ["Candidate", "Router", "make_router"]
