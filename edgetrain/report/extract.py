"""Read run directories into plain records (no drawing here, so it is easy to test)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrain.engine.rundir import RunDirectory
from edgetrain.errors import EdgetrainError

__all__ = ["RunRecord", "load_run", "load_runs", "series"]


@dataclass
class RunRecord:
    """Everything a report shows of one run, read from its folder alone."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def best(self) -> dict[str, Any] | None:
        """Best epoch by validation top-1, recomputed from the metrics lines."""
        records = [m for m in self.metrics if "val_top1" in m]
        return max(records, key=lambda m: m["val_top1"]) if records else None

    @property
    def total_time(self) -> float:
        return float(sum(m.get("epoch_time", 0.0) + m.get("eval_time", 0.0) for m in self.metrics))


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read one run directory; raises a one-line error for a folder that is not a run."""
    run = RunDirectory(path)
    if not run.path.is_dir():
        raise EdgetrainError(f"run directory '{run.path}' does not exist")
    config = run.read_config()
    return RunRecord(
        name=str(config.get("name", run.path.name)),
        path=run.path,
        config=config,
        metrics=run.read_metrics(),
        summary=run.read_summary(),
    )


def load_runs(paths: list[str | os.PathLike[str]]) -> list[RunRecord]:
    """Read several run directories; names are made unique for legends."""
    runs = [load_run(p) for p in paths]
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name} ({run.path})"
    return runs


def series(run: RunRecord, key: str, x: str = "epoch") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of a metric over the run, skipping epochs that lack it."""
    pts = [(m[x], m[key]) for m in run.metrics if key in m and x in m]
    return [p[0] for p in pts], [p[1] for p in pts]
