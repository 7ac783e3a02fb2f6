"""Start or resume a configured run in its run directory: what ``edgetrain train`` calls."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetrain.engine import SCHEDULERS
from edgetrain.engine.rundir import RunDirectory
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.runs.build import build_trainer
from edgetrain.runs.config import RunConfig, load_config
from edgetrain.runs.reopen import check_not_partial

__all__ = ["RunResult", "resume_run", "start_run"]


@dataclass
class RunResult:
    """Where a run was written and what it achieved (``is_main``: this process wrote it)."""

    run_dir: RunDirectory
    config: RunConfig
    summary: dict[str, Any]
    is_main: bool = True


def start_run(
    config: RunConfig,
    runs_root: str | Path = "runs",
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train ``config`` into ``<runs_root>/<config.name>``.

    Everything (data, model, optimizer) is built before the folder is touched, so bad
    input never leaves a run directory behind, and ``overwrite`` never loses an old run
    to a new one that cannot start.

    Raises:
        EdgetrainError: when the run directory exists and ``overwrite`` is False.
    """
    run_dir = RunDirectory(Path(runs_root) / config.name)
    if run_dir.path.exists() and any(run_dir.path.iterdir()) and not overwrite:
        raise EdgetrainError(
            f"run directory '{run_dir.path}' exists; continue it with --resume "
            f"{run_dir.path}, or pass --overwrite or another --name"
        )
    trainer = build_trainer(config, None, progress)
    if trainer.is_main:
        if run_dir.path.exists():
            shutil.rmtree(run_dir.path)
        trainer.attach_run_dir(run_dir)
        run_dir.write_config(config.to_dict())
    try:
        trainer.fit(config.epochs)
    except EdgetrainError:
        # A callback refusing its settings at fit start: leave no run folder behind.
        if trainer.is_main and trainer.state.epoch == 0 and run_dir.path.exists():
            shutil.rmtree(run_dir.path)
        raise
    return RunResult(run_dir, config, run_dir.read_summary(), trainer.is_main)


def resume_run(path: str | Path, epochs: int | None = None, progress: bool = True) -> RunResult:
    """Continue the run in ``path`` from its last finished epoch (same config, same seed)."""
    run_dir = RunDirectory(path)
    check_not_partial(run_dir.path, "resuming its training")
    config = load_config(run_dir.read_config())
    if run_dir.read_summary().get("status") == "stopped" and epochs is None:
        raise ConfigError(
            f"run '{run_dir.path}' was stopped early by a callback and is finished; "
            "pass --epochs to train further anyway"
        )
    if epochs is not None and epochs != config.epochs:
        sched = config.scheduler
        if sched is not None and SCHEDULERS.entry(sched.name).meta.get("length_dependent"):
            raise ConfigError(
                f"the '{sched.name}' schedule of '{run_dir.path}' was planned for "
                f"{config.epochs} epochs and cannot be stretched to {epochs}; resume without "
                "--epochs, or start a new run with model.init_from set to this run"
            )
        config = load_config(config.to_dict(), epochs=epochs)
    last = run_dir.checkpoints / "last.pt"
    trainer = build_trainer(config, None, progress, load_init=not last.is_file())
    if trainer.is_main:
        trainer.attach_run_dir(run_dir)  # before loading: its writers restore their state too
        run_dir.write_config(config.to_dict())
    if last.is_file():
        trainer.load_checkpoint(last)
    trainer.fit(config.epochs)
    return RunResult(run_dir, config, run_dir.read_summary(), trainer.is_main)
