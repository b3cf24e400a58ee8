"""Benchmarking a deployment: the workload, the load process (`python -m
orchestrator.benchmark`), its statistics, and the report at the end of a sweep."""
