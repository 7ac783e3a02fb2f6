"""The run directory: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/``,
``plots/`` and ``report.html``. Reports are regenerated from this folder alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from edgetrain._atomic import atomic_writer, writable_folder
from edgetrain.engine.jsonl import JsonLines
from edgetrain.errors import EdgetrainError

__all__ = ["RunDirectory", "atomic_write_text"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_writer(path, "w") as f:
        f.write(text)


class RunDirectory:
    """Paths and readers/writers of one run's folder.

    Example:
        >>> run = RunDirectory("runs/demo")           # doctest: +SKIP
        >>> run.append_metrics({"epoch": 1, "val_top1": 91.2})  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory('{self.path}')"

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    plots = property(lambda self: self.path / "plots")
    report_path = property(lambda self: self.path / "report.html")

    def create(self) -> RunDirectory:
        """Make the folder with its ``checkpoints/`` and ``plots/`` subfolders."""
        writable_folder(self.checkpoints, "run directory")
        writable_folder(self.plots, "run directory")
        return self

    def exists(self) -> bool:
        return self.config_path.is_file()

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise EdgetrainError(
                f"'{self.path}' is not a run directory (no config.yaml); "
                "pass a folder written by 'edgetrain train'"
            )
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    @property
    def metrics(self) -> JsonLines:
        """``metrics.jsonl``: one record per epoch, flushed as written."""
        return JsonLines(self.metrics_path)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line and flush it to disk immediately."""
        self.metrics.append(record)

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete metric lines (a torn last line from a crash is ignored)."""
        return self.metrics.read()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=float) + "\n")

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_path.is_file():
            return {}
        return json.loads(self.summary_path.read_text(encoding="utf-8"))
