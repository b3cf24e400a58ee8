"""Printing a plan for people (`dry_run=true`): a table, then each command line."""

from __future__ import annotations

import shlex

from rich.console import Console
from rich.table import Table

from orchestrator.plan.plan import LaunchPlan


def print_table(plan: LaunchPlan, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"Launch plan: {plan.served_name} at {plan.url}", title_justify="left")
    for column in ("process", "type", "node", "GPUs", "ports", "health", "stage"):
        table.add_column(column, overflow="fold")
    for p in plan.processes:
        table.add_row(
            p.name,
            p.worker_type.value if p.worker_type else p.role.value,
            str(p.node),
            ",".join(map(str, p.gpus)) or "-",
            " ".join(f"{k}={v}" for k, v in p.ports.items()),
            p.health_url,
            str(p.stage),
        )
    console.print(table)
    console.print(f"run dir: {plan.run_dir}")
    for path in plan.files:
        console.print(f"file: {path}")
    for p in plan.processes:
        console.print(f"\n[bold]{p.name}[/bold]", highlight=False)
        console.print(command_line(p.env, p.argv), soft_wrap=True, highlight=False, markup=False)


def command_line(env, argv) -> str:
    """A shell line that runs the process by hand exactly as the plan would."""
    assignments = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return " ".join(assignments + [shlex.quote(a) for a in argv])
