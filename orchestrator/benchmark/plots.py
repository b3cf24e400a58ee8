"""The sweep's plots, PNG files drawn with matplotlib's Agg backend (no display needed).

A configuration is a job's varying overrides other than the concurrency; each one is a
series, its points ordered by concurrency:
- pareto.png: output tokens/s per GPU against TTFT p50, each point labelled with its
  concurrency: the throughput a latency budget buys;
- ttft_vs_concurrency.png and itl_vs_concurrency.png: p50 latency as the load grows.
Jobs that failed, or ran without a concurrency (a request rate, a trace), have no
point in the concurrency plots.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PLOTS = ("pareto.png", "ttft_vs_concurrency.png", "itl_vs_concurrency.png")


def _is_concurrency(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "concurrency"


def _concurrency(job: dict, overrides: dict[str, str]) -> float | None:
    value = job["summary"].get("concurrency")
    if value is None:
        value = next((v for k, v in overrides.items() if _is_concurrency(k)), None)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def series(jobs: list[dict], overrides: list[dict[str, str]], keys: list[str]) -> dict[str, list]:
    """Configuration label -> [(concurrency, summary)] of its successful jobs, by concurrency;
    `overrides` are the jobs' parsed overrides, `keys` the varying ones."""
    grouped: dict[str, list[tuple[float | None, dict]]] = defaultdict(list)
    for job, parsed in zip(jobs, overrides, strict=True):
        if job["status"] != "ok" or not job.get("summary"):
            continue
        label = ", ".join(f"{k}={parsed.get(k, '')}" for k in keys if not _is_concurrency(k)) or "all jobs"
        grouped[label].append((_concurrency(job, parsed), job["summary"]))
    for points in grouped.values():
        points.sort(key=lambda p: (p[0] is None, p[0] or 0))
    return dict(grouped)


def write_plots(jobs: list[dict], overrides: list[dict[str, str]], keys: list[str], out_dir: Path) -> list[Path]:
    groups = series(jobs, overrides, keys)
    paths = [out_dir / name for name in PLOTS]
    _pareto(groups, paths[0])
    _versus_concurrency(groups, "ttft_ms_p50", "TTFT p50 (ms)", paths[1])
    _versus_concurrency(groups, "itl_ms_p50", "ITL p50 (ms)", paths[2])
    return paths


def _pareto(groups: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in groups.items():
        drawn = [(c, s["ttft_ms_p50"], s["output_throughput_per_gpu"]) for c, s in points
                 if s.get("ttft_ms_p50") is not None]
        if not drawn:
            continue
        ax.plot([x for _, x, _ in drawn], [y for _, _, y in drawn], marker="o", label=label)
        for c, x, y in drawn:
            if c is not None:
                ax.annotate(f"{c:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    _finish(fig, ax, "TTFT p50 (ms)", "output tokens/s per GPU", "throughput against latency", path)


def _versus_concurrency(groups: dict, key: str, ylabel: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in groups.items():
        drawn = [(c, s[key]) for c, s in points if c is not None and s.get(key) is not None]
        if drawn:
            ax.plot([c for c, _ in drawn], [v for _, v in drawn], marker="o", label=label)
    _finish(fig, ax, "concurrency", ylabel, f"{ylabel} against concurrency", path)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
