"""A scenario's full comparison: conventional fine-tuning, one more layer frozen, and
each schedule in each mode, every case with its own learning-rate grid, as one table.

Columns follow the spec's scenario table: schedule, mode, best LR, best accuracy, LR
range, average ops per step, ops relative to conventional, peak ops, peak memory (naive
and with reuse) and peak memory relative to conventional.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgetrain import models
from edgetrain.engine import RunConfig, load_config
from edgetrain.finetune.costing import optimise_placement, schedule_cost
from edgetrain.finetune.grid import lr_grid
from edgetrain.finetune.schedule import DIGITS, Schedule

__all__ = ["ScenarioRow", "compare_schedules", "scenario_cases"]


@dataclass(frozen=True)
class ScenarioRow:
    """One line of the scenario table."""

    schedule: str
    mode: str
    best_lr: float
    best_accuracy: float
    lr_low: float
    lr_high: float
    average_ops: float
    relative_ops: float
    peak_ops: int
    peak_memory_bytes: int
    peak_memory_reuse_bytes: int
    relative_peak_memory: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scenario_cases(schedules: Sequence[str], modes: Sequence[str]) -> list[Schedule]:
    """Conventional, conventional with one more layer frozen, then every schedule in every
    mode (duplicates dropped), all with as many rows as the first schedule."""
    parsed = [Schedule.parse(s) for s in schedules]
    rows = parsed[0].rows
    if any(p.rows != rows for p in parsed):
        raise ValueError("every schedule of a comparison needs the same number of rows")
    t = parsed[0].cycle_length
    cases = [Schedule.parse(DIGITS[t] * rows), Schedule.parse(DIGITS[t] * (rows - 1) + "0")]
    for p in parsed:
        for mode in modes:
            cases.append(p.in_mode(mode))
    unique: dict[str, Schedule] = {}
    for case in cases:
        unique.setdefault(str(case), case)
    return list(unique.values())


def compare_schedules(
    config: RunConfig,
    schedules: Sequence[str],
    upper: float,
    lower: float,
    modes: Sequence[str] = ("bpls", "pllr", "upscaled", "rdo"),
    tolerance: float = 1.0,
    runs_root: str | Path = "runs",
    progress: bool = True,
    profile: str | Path = "reference",
    **grid_options: Any,
) -> list[ScenarioRow]:
    """Run every case of :func:`scenario_cases` with an LR grid; one row per case (costs
    under ``profile``; ops are its calibrated estimate when it is not ``reference``)."""
    model = models.create(config.model.name, **config.model.options)
    shape = tuple(model.input_shape)
    cases = scenario_cases(schedules, modes)
    reference = schedule_cost(model, shape, cases[0], profile=profile)
    rows = []
    for case in cases:
        tree = config.to_dict()
        tree["name"] = f"{config.name}-{case}"
        tree["callbacks"] = [*tree["callbacks"], {"name": "layer-schedule", "schedule": str(case)}]
        grid = lr_grid(
            load_config(tree),
            upper,
            lower,
            tolerance=tolerance,
            runs_root=runs_root,
            progress=progress,
            **grid_options,
        )
        placed = optimise_placement(case, model, shape) if case.memory_optimised else case
        cost = schedule_cost(model, shape, placed, profile=profile)  # as the run places it
        rows.append(
            ScenarioRow(
                schedule=str(case),
                mode=case.mode,
                best_lr=grid.best_lr,
                best_accuracy=grid.best_accuracy,
                lr_low=grid.lr_range[0],
                lr_high=grid.lr_range[1],
                average_ops=cost.average_step_macs,
                relative_ops=cost.average_step_macs / reference.average_step_macs,
                peak_ops=cost.peak_step_macs,
                peak_memory_bytes=cost.peak_memory_bytes,
                peak_memory_reuse_bytes=cost.peak_memory_reuse_bytes,
                relative_peak_memory=cost.peak_memory_bytes / reference.peak_memory_bytes,
            )
        )
    return rows
