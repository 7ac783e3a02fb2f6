"""A scenario's full comparison: conventional fine-tuning, one more layer frozen, and
each schedule in each mode, every case with its own learning-rate grid, as one table.

Columns follow the spec's scenario table: schedule, mode, best LR, best accuracy (top-1,
and top-5 when the data set has more than 10 classes), LR range, average ops per step, ops
relative to conventional, peak ops, peak memory (naive and with reuse) and peak memory
relative to conventional.

With ``seeds`` > 1 every LR point runs that many seeds and a case's accuracy is their
mean, with the standard deviation and a paired t-test against conventional fine-tuning
(seed k against seed k, at each case's best LR). Every row also says how much training
reached conventional fine-tuning's best accuracy: the epochs each seed needed to reach
the best top-1 of the conventional run of the same seed, and the **total training
operations to that target** (epochs x samples x the schedule's average MACs per sample
step), relative to what conventional fine-tuning needed to reach its own best. This is
how the BPLS thesis states its headline saving ("fewer operations to reach conventional
training's best accuracy"), unlike ops per step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgetrain import data as data_sets
from edgetrain.engine import RunDirectory
from edgetrain.finetune.adaptive import adaptive_label
from edgetrain.finetune.costing import ScheduleCost, optimise_placement, schedule_cost
from edgetrain.finetune.schedule import DIGITS, Schedule
from edgetrain.runs.build import build_run_model
from edgetrain.runs.config import RunConfig, load_config
from edgetrain.runs.grid import GridResult, GridTrial, lr_grid

__all__ = [
    "TOP5_MIN_CLASSES",
    "ScenarioRow",
    "compare_schedules",
    "paired_p_value",
    "scenario_cases",
    "scenario_table",
    "target_table",
    "verdicts",
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
    seeds: int = 1
    accuracy_std: float = 0.0
    p_value: float | None = None
    reached: int = 0
    epochs_to_target: float | None = None
    ops_to_target: float | None = None
    relative_ops_to_target: float | None = None

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
    seeds: int = 1,
    adaptive: Sequence[Mapping[str, Any]] = (),
    **grid_options: Any,
) -> list[ScenarioRow]:
    """Run every case of :func:`scenario_cases` with an LR grid (``seeds`` runs per LR
    point); one row per case (costs under ``profile``; ops are its calibrated estimate
    when it is not ``reference``), with the mean accuracy, its spread and paired test
    against conventional fine-tuning, and the operations to reach conventional
    fine-tuning's best. Rows carry ``best_top5`` when the data set has more than 10
    classes.

    ``adaptive``: options of adaptive schedules (:class:`~edgetrain.finetune.AdaptiveSchedule`:
    ``ops_budget``, ``memory_budget``, ``signal`` ...) compared in the same table, one
    row each (mode ``adaptive``), over the first schedule's rows and cycle; their costs
    are what their runs logged epoch by epoch (the mean over training, and the most
    expensive cycle for the peaks)."""
    model, shape = build_run_model(config)
    classes = data_sets.describe(config.data.name, **config.data.options).num_classes
    with_top5 = classes > TOP5_MIN_CLASSES
    cases = scenario_cases(schedules, modes)
    reference = schedule_cost(model, shape, cases[0], profile=profile)

    def grid_of(label: str, callback: dict[str, Any]) -> GridResult:
        """The LR grid of one case: the recipe with ``callback`` added, runs named by
        ``label``."""
        tree = config.to_dict()
        tree["name"] = f"{config.name}-{label}"
        tree["callbacks"] = [*tree["callbacks"], callback]
        return lr_grid(
            load_config(tree),
            upper,
            lower,
            tolerance=tolerance,
            runs_root=runs_root,
            progress=progress,
            seeds=seeds,
            **grid_options,
        )

    measured = []
    for case in cases:
        grid = grid_of(case.slug, {"name": "layer-schedule", "schedule": str(case)})
        placed = optimise_placement(case, model, shape) if case.memory_optimised else case
        cost = schedule_cost(model, shape, placed, profile=profile)  # as the run places it
        measured.append((case, grid, cost))
    rows_, cycle = cases[0].rows, cases[0].cycle_length
    adaptive_runs = []
    for options in adaptive:
        label = adaptive_label(dict(options))
        callback = {"name": "adaptive-schedule", "rows": rows_, "cycle": cycle, **options}
        grid = grid_of(label, callback)
        adaptive_runs.append((label, grid, _logged_cost(_best_trial(grid), reference)))
    conventional = _best_trial(measured[0][1])
    targets = conventional.accuracies or (conventional.accuracy,)
    conventional_ops = _to_target(conventional, targets, measured[0][2].average_step_macs)[2]
    rows: list[ScenarioRow] = []
    every = [(str(case), case.mode, grid, _CaseCost.of(cost)) for case, grid, cost in measured]
    every += [(label, "adaptive", grid, logged) for label, grid, logged in adaptive_runs]
    for name, mode, grid, case_cost in every:
        best = _best_trial(grid)
        accuracies = best.accuracies or (best.accuracy,)
        reached, epochs, ops = _to_target(best, targets, case_cost.average_step_macs)
        rows.append(
            ScenarioRow(
                schedule=name,
                mode=mode,
                best_lr=grid.best_lr,
                best_accuracy=grid.best_accuracy,
                lr_low=grid.lr_range[0],
                lr_high=grid.lr_range[1],
                average_ops=case_cost.average_step_macs,
                relative_ops=case_cost.average_step_macs / reference.average_step_macs,
                peak_ops=case_cost.peak_step_macs,
                peak_memory_bytes=case_cost.peak_memory_bytes,
                peak_memory_reuse_bytes=case_cost.peak_memory_reuse_bytes,
                relative_peak_memory=case_cost.peak_memory_bytes / reference.peak_memory_bytes,
                best_top5=_top5_at_best(grid) if with_top5 else None,
                seeds=len(accuracies),
                accuracy_std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                p_value=None if not rows else paired_p_value(accuracies, targets),
                reached=reached,
                epochs_to_target=epochs,
                ops_to_target=ops,
                relative_ops_to_target=(
                    None if ops is None or not conventional_ops else ops / conventional_ops
                ),
            )
        )
    return rows


@dataclass(frozen=True)
class _CaseCost:
    """The cost columns of one case: a fixed schedule's cycle, or what an adaptive run
    logged."""

    average_step_macs: float
    peak_step_macs: int
    peak_memory_bytes: int
    peak_memory_reuse_bytes: int

    @classmethod
    def of(cls, cost: ScheduleCost) -> _CaseCost:
        return cls(
            cost.average_step_macs,
            cost.peak_step_macs,
            cost.peak_memory_bytes,
            cost.peak_memory_reuse_bytes,
        )


def _logged_cost(trial: GridTrial, reference: ScheduleCost) -> _CaseCost:
    """An adaptive case's costs from its runs' metrics: MACs per step averaged over every
    epoch of every seed, peaks the largest of any epoch's cycle."""
    records = [
        m
        for run_dir in trial.run_dirs or (trial.run_dir,)
        for m in RunDirectory(run_dir).read_metrics()
        if "schedule_step_macs" in m
    ]
    if not records:  # a run that logged nothing (stopped before its first epoch ended)
        return _CaseCost.of(reference)
    return _CaseCost(
        statistics.fmean(float(m["schedule_step_macs"]) for m in records),
        int(max(float(m["schedule_peak_step_macs"]) for m in records)),
        int(max(float(m["schedule_peak_memory_bytes"]) for m in records)),
        int(max(float(m["schedule_peak_memory_reuse_bytes"]) for m in records)),
    )


def _best_trial(grid: GridResult) -> GridTrial:
    return next(t for t in grid.trials if t.lr == grid.best_lr)


def paired_p_value(values: Sequence[float], others: Sequence[float]) -> float | None:
    """Two-sided paired t-test of ``values`` against ``others`` (seed k against seed k);
    None with fewer than two pairs, 1.0 when every pair is equal."""
    if len(values) < 2 or len(values) != len(others):
        return None
    differences = [a - b for a, b in zip(values, others, strict=True)]
    if all(d == 0 for d in differences):
        return 1.0
    from scipy import stats

    p = float(stats.ttest_rel(values, others).pvalue)
    return p if math.isfinite(p) else None


def _to_target(
    trial: GridTrial, targets: Sequence[float], step_macs: float
) -> tuple[int, float | None, float | None]:
    """How many of the trial's seeds reached their seed's target accuracy, and the mean
    epochs and total training MACs (steps x batch x MACs per sample step, summed over the
    epochs up to the target) they took to get there (None when no seed did). An epoch
    that logged its own ``schedule_step_macs`` (an adaptive schedule) is counted at
    that, every other at ``step_macs``."""
    dirs = trial.run_dirs or (trial.run_dir,)
    epochs, ops = [], []
    for run_dir, target in zip(dirs, targets, strict=False):
        folder = RunDirectory(run_dir)
        batch = int(folder.read_config().get("data", {}).get("batch_size", 1))
        total, previous_step, first = 0.0, 0, None
        for m in folder.read_metrics():
            if "epoch" not in m or "step" not in m:
                continue
            step = int(m["step"])
            total += (step - previous_step) * batch * float(m.get("schedule_step_macs", step_macs))
            previous_step = step
            if "val_top1" in m and float(m["val_top1"]) >= target:
                first = int(m["epoch"])
                break
        if first is None:
            continue
        epochs.append(first)
        ops.append(total)
    if not epochs:
        return 0, None, None
    return len(epochs), statistics.fmean(epochs), statistics.fmean(ops)


def _top5_at_best(grid: GridResult) -> float:
    """Validation top-5 of the grid's best run at its best top-1 epoch (NaN if not logged)."""
    trial = next(t for t in grid.trials if t.lr == grid.best_lr)
    for record in RunDirectory(trial.run_dir).read_metrics():
        if record.get("epoch") == trial.epoch and "val_top5" in record:
            return float(record["val_top5"])
    return float("nan")


def scenario_table(
    rows: Sequence[ScenarioRow], targets: bool = True
) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the scenario table (top-5 only when the rows have it;
    the spread and the paired test only with several seeds; the columns of reaching
    conventional fine-tuning's best unless ``targets`` is False: :func:`target_table`
    gives them apart), for the CLI and the benchmarks alike."""
    top5 = bool(rows) and rows[0].best_top5 is not None
    seeded = bool(rows) and rows[0].seeds > 1
    header = [
        "schedule",
        "mode",
        "best LR",
        "best top-1 %" + (f" (mean ± sd, {rows[0].seeds} seeds)" if seeded else ""),
        *(["p vs conv."] if seeded else []),
        *(["top-5 % at best top-1"] if top5 else []),
        "LR range",
        "ops/step",
        "rel. ops",
        *(TARGET_HEADER if targets else []),
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
            f"{r.best_accuracy:.2f}" + (f" ± {r.accuracy_std:.2f}" if seeded else ""),
            *([_p(r.p_value)] if seeded else []),
            *([f"{r.best_top5:.2f}"] if top5 else []),
            f"{r.lr_low:.3g}..{r.lr_high:.3g}",
            f"{r.average_ops:,.0f}",
            f"{r.relative_ops:.3f}",
            *(_target_cells(r) if targets else []),
            f"{r.peak_ops:,}",
            f"{r.peak_memory_bytes / 1024:,.1f}",
            f"{r.peak_memory_reuse_bytes / 1024:,.1f}",
            f"{r.relative_peak_memory:.3f}",
        ]
        for r in rows
    ]
    return header, cells


TARGET_HEADER = ["reached conv. best", "epochs to it", "rel. ops to it"]


def _target_cells(r: ScenarioRow) -> list[str]:
    return [
        f"{r.reached}/{r.seeds}",
        "-" if r.epochs_to_target is None else f"{r.epochs_to_target:.1f}",
        "-" if r.relative_ops_to_target is None else f"{r.relative_ops_to_target:.3f}",
    ]


def target_table(rows: Sequence[ScenarioRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of reaching conventional fine-tuning's best top-1: per row, the
    seeds that reached it, the epochs and the total operations (relative to
    conventional's to its own best) it took, and the ops per step for comparison."""
    header = ["schedule", "mode", *TARGET_HEADER, "rel. ops per step"]
    cells = [[r.schedule, r.mode, *_target_cells(r), f"{r.relative_ops:.3f}"] for r in rows]
    return header, cells


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def verdicts(rows: Sequence[ScenarioRow]) -> list[str]:
    """One line per schedule against conventional fine-tuning, stated as the BPLS thesis
    states its saving: the operations needed to reach conventional training's best
    accuracy (not the operations per step)."""
    if not rows:
        return []
    conventional = rows[0]
    lines = []
    for r in rows[1:]:
        head = f"{r.schedule} ({r.mode}): "
        if r.relative_ops_to_target is None:
            lines.append(
                head + f"did not reach conventional fine-tuning's best top-1 in {r.seeds} "
                f"seed(s) (its best: {r.best_accuracy:.2f} % against "
                f"{conventional.best_accuracy:.2f} %)"
            )
            continue
        saving = 100 * (1 - r.relative_ops_to_target)
        word = "fewer" if saving >= 0 else "more"
        test = "" if r.p_value is None else f"; top-1 difference paired p = {r.p_value:.3f}"
        lines.append(
            head + f"{abs(saving):.1f} % {word} operations to reach conventional "
            f"fine-tuning's best top-1 ({r.reached}/{r.seeds} seeds reached it, "
            f"{100 * (1 - r.relative_ops):.1f} % fewer per step){test}"
        )
    return lines
