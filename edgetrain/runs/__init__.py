"""Run assembly: the run config, building data, model and trainer from it, the one path
that reopens a run directory, and the drivers that run many runs (LR grid, scenario
comparison, transfer depth).

Example:
    >>> from edgetrain.runs import load_config, start_run
    >>> config = load_config("digits-pretrain", epochs=1)   # doctest: +SKIP
    >>> result = start_run(config)                          # doctest: +SKIP
"""

from __future__ import annotations

from edgetrain.runs.build import build_model, build_run_model, build_trainer
from edgetrain.runs.compare import ScenarioRow, compare_schedules, scenario_cases, scenario_table
from edgetrain.runs.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    apply_overrides,
    load_config,
)
from edgetrain.runs.data import build_data
from edgetrain.runs.depth import DepthCase, sweep_depth, trainable_forward_macs
from edgetrain.runs.grid import GridResult, GridTrial, lr_grid
from edgetrain.runs.morphnet import run_morphnet
from edgetrain.runs.reopen import (
    TrainedRun,
    load_trained_model,
    load_trained_run,
    open_run_config,
    restore_saved_architecture,
)
from edgetrain.runs.train import RunResult, resume_run, start_run

__all__ = [
    "DataConfig",
    "DepthCase",
    "GridResult",
    "GridTrial",
    "ModelConfig",
    "RunConfig",
    "RunResult",
    "ScenarioRow",
    "TrainedRun",
    "apply_overrides",
    "build_data",
    "build_model",
    "build_run_model",
    "build_trainer",
    "compare_schedules",
    "load_config",
    "load_trained_model",
    "load_trained_run",
    "lr_grid",
    "open_run_config",
    "restore_saved_architecture",
    "resume_run",
    "run_morphnet",
    "scenario_cases",
    "scenario_table",
    "start_run",
    "sweep_depth",
    "trainable_forward_macs",
]
