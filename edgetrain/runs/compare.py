"""A scenario's full comparison: conventional fine-tuning, one more layer frozen, and
each schedule in each mode, every case with its own learning-rate grid, as one table.

Columns follow the spec's scenario table: schedule, mode, best LR, best accuracy (top-1,
and top-5 when the data set has more than 10 classes), LR range, average ops per step, ops
relative to conventional, peak ops, peak memory (naive and with reuse) and peak memory
relative to conventional.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgetrain import data as data_sets
from edgetrain.engine import RunDirectory
from edgetrain.finetune.costing import optimise_placement, schedule_cost
from edgetrain.finetune.schedule import DIGITS, Schedule
from edgetrain.runs.build import build_run_model
from edgetrain.runs.config import RunConfig, load_config
from edgetrain.runs.grid import GridResult, lr_grid

__all__ = [
    "TOP5_MIN_CLASSES",
    "ScenarioRow",
    "compare_schedules",
    "scenario_cases",
    "scenario_table",
]

# The table has a top-5 column only for data sets with more classes than this.
TOP5_MIN_CLASSES = 10


@dataclass(frozen=True)
class ScenarioRow:
    """One line of the scenario table.

    ``best_top5`` is the top-5 accuracy of the best-LR run at its best top-1 epoch (the
    model that ``best_accuracy`` describes); it is ``None``, and left out of
    :meth:`to_dict`, when the data set has at most 10 classes.
    """

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
    best_top5: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row in table order; ``best_top5`` follows ``best_accuracy`` when present."""
        d = asdict(self)
        top5 = d.pop("best_top5")
        if top5 is None:
            return d
        keys = list(d)
        at = keys.index("best_accuracy") + 1
        return {**{k: d[k] for k in keys[:at]}, "best_top5": top5, **{k: d[k] for k in keys[at:]}}


def scenario_cases(schedules: Sequence[str], modes: Sequence[str]) -> list[Schedule]:
    """Conventional, conventional with one more layer frozen, then every schedule in every
    mode (duplicates dropped), all with as many rows as the first schedule. An explicit
    matrix (``1111/1010/0101``) is one case as written: a mode derived from its update
    counts would lose its placement."""
    parsed = [Schedule.parse(s) for s in schedules]
    rows = parsed[0].rows
    if any(p.rows != rows for p in parsed):
        raise ValueError("every schedule of a comparison needs the same number of rows")
    t = parsed[0].cycle_length
    cases = [Schedule.parse(DIGITS[t] * rows), Schedule.parse(DIGITS[t] * (rows - 1) + "0")]
    for p in parsed:
        if "/" in str(p):  # an explicit matrix: compared as written, no mode derived
            cases.append(p)
            continue
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
    under ``profile``; ops are its calibrated estimate when it is not ``reference``).
    Rows carry ``best_top5`` when the data set has more than 10 classes."""
    model, shape = build_run_model(config)
    classes = data_sets.describe(config.data.name, **config.data.options).num_classes
    with_top5 = classes > TOP5_MIN_CLASSES
    cases = scenario_cases(schedules, modes)
    reference = schedule_cost(model, shape, cases[0], profile=profile)
    rows = []
    for case in cases:
        tree = config.to_dict()
        tree["name"] = f"{config.name}-{case.slug}"
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
                best_top5=_top5_at_best(grid) if with_top5 else None,
            )
        )
    return rows


def _top5_at_best(grid: GridResult) -> float:
    """Validation top-5 of the grid's best run at its best top-1 epoch (NaN if not logged)."""
    trial = next(t for t in grid.trials if t.lr == grid.best_lr)
    for record in RunDirectory(trial.run_dir).read_metrics():
        if record.get("epoch") == trial.epoch and "val_top5" in record:
            return float(record["val_top5"])
    return float("nan")


def scenario_table(rows: Sequence[ScenarioRow]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the scenario table (top-5 only when the rows have it),
    for the CLI and the benchmarks alike."""
    top5 = bool(rows) and rows[0].best_top5 is not None
    header = [
        "schedule",
        "mode",
        "best LR",
        "best top-1 %",
        *(["top-5 % at best top-1"] if top5 else []),
        "LR range",
        "ops/step",
        "rel. ops",
        "peak ops",
        "peak mem KiB",
        "reuse KiB",
        "rel. mem",
    ]
    cells = [
        [
            r.schedule,
            r.mode,
            f"{r.best_lr:.4g}",
            f"{r.best_accuracy:.2f}",
            *([f"{r.best_top5:.2f}"] if top5 else []),
            f"{r.lr_low:.3g}..{r.lr_high:.3g}",
            f"{r.average_ops:,.0f}",
            f"{r.relative_ops:.3f}",
            f"{r.peak_ops:,}",
            f"{r.peak_memory_bytes / 1024:,.1f}",
            f"{r.peak_memory_reuse_bytes / 1024:,.1f}",
            f"{r.relative_peak_memory:.3f}",
        ]
        for r in rows
    ]
    return header, cells
