"""The learning-rate grid search of the layer-scheduling experiments.

The base learning rate is the one hyper-parameter swept: a geometric descent from an
upper to a lower bound with factor 1.4, then factor 1.2 and 1.1 around the best so far;
ties go to the higher rate; hopeless runs are aborted early (accuracy still below 30 %
after 20 epochs). The *LR range* is the lowest to highest rate whose best accuracy is
within ``tolerance`` points of the best. Finished runs are reused, so an interrupted
grid continues where it stopped. With ``seeds`` > 1 every rate runs that many seeds
(``<name>-lr<rate>``, then ``-s1``, ``-s2`` ...) and is judged by their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetrain.engine import RunDirectory
from edgetrain.errors import ConfigError
from edgetrain.runs.config import RunConfig, load_config
from edgetrain.runs.train import start_run

__all__ = ["GridResult", "GridTrial", "lr_grid"]


@dataclass(frozen=True)
class GridTrial:
    """One learning rate tried: ``accuracy`` is the mean best top-1 over its seeds;
    ``epoch``, ``status`` and ``run_dir`` are the first seed's, ``accuracies`` and
    ``run_dirs`` every seed's (in seed order)."""

    lr: float
    stage: int
    accuracy: float
    epoch: int
    status: str
    run_dir: str
    accuracies: tuple[float, ...] = ()
    run_dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class GridResult:
    """The grid: every trial, the best rate and the range within tolerance."""

    trials: list[GridTrial]
    best_lr: float
    best_accuracy: float
    lr_range: tuple[float, float]
    tolerance: float


def _descent(upper: float, lower: float, factor: float) -> list[float]:
    rates, lr = [], upper
    while lr >= lower * (1 - 1e-9):
        rates.append(lr)
        lr /= factor
    return rates


def lr_grid(
    config: RunConfig,
    upper: float,
    lower: float,
    factors: Sequence[float] = (1.4, 1.2, 1.1),
    tolerance: float = 1.0,
    abort_epoch: int = 20,
    abort_below: float = 30.0,
    runs_root: str | Path = "runs",
    progress: bool = True,
    seeds: int = 1,
) -> GridResult:
    """Search the base learning rate of ``config`` (its optimizer's ``lr``).

    Args:
        config: the run to tune; each trial is ``<config.name>-lr<rate>``.
        upper, lower: bounds of the coarse descent (``factors[0]``).
        factors: the coarse factor, then the refinement factors around the best.
        tolerance: accuracy points below the best that still count for the LR range.
        abort_epoch, abort_below: stop a trial still below ``abort_below`` % accuracy
            after ``abort_epoch`` epochs.
        seeds: runs per rate (seeds ``config.seed`` + 0, 1, ...); a rate's accuracy is
            their mean.
    """
    if not 0 < lower <= upper:
        raise ConfigError(f"the LR bounds need 0 < lower <= upper (got {lower}, {upper})")
    if not factors or min(factors) <= 1:
        raise ConfigError("every grid factor must be > 1")
    if seeds < 1:
        raise ConfigError(f"seeds={seeds} must be at least 1")
    tried: dict[float, GridTrial] = {}

    def run(lr: float, stage: int) -> None:
        key = float(f"{lr:.6g}")
        if key in tried:
            return
        found = []
        for k in range(seeds):
            tree = config.to_dict()
            tree["name"] = f"{config.name}-lr{key:g}" + (f"-s{k}" if k else "")
            tree["seed"] = config.seed + k
            tree["optimizer"] = {**tree["optimizer"], "lr": key}
            tree["callbacks"] = [
                *tree["callbacks"],
                {"name": "abort-below", "epoch": abort_epoch, "minimum": abort_below},
            ]
            trial = load_config(tree)
            folder = RunDirectory(Path(runs_root) / trial.name)
            summary = folder.read_summary() if folder.path.exists() else {}
            if summary.get("status") not in ("completed", "stopped"):
                summary = start_run(trial, runs_root, overwrite=True, progress=progress).summary
            best = summary.get("best", {})
            found.append(
                (
                    float(best.get("val_top1", 0.0)),
                    int(best.get("epoch", 0)),
                    summary.get("status", "?"),
                    str(folder.path),
                )
            )
        accuracies = tuple(f[0] for f in found)
        tried[key] = GridTrial(
            key,
            stage,
            sum(accuracies) / len(accuracies),
            found[0][1],
            found[0][2],
            found[0][3],
            accuracies,
            tuple(f[3] for f in found),
        )

    def best() -> GridTrial:
        # ties go to the higher learning rate
        return max(tried.values(), key=lambda t: (t.accuracy, t.lr))

    for lr in _descent(upper, lower, factors[0]):
        run(lr, 1)
    for stage, factor in enumerate(factors[1:], start=2):
        center = best().lr
        for lr in (center * factor, center / factor):
            if lower <= lr <= upper:
                run(lr, stage)
    top = best()
    good = [t.lr for t in tried.values() if t.accuracy >= top.accuracy - tolerance]
    trials = sorted(tried.values(), key=lambda t: -t.lr)
    return GridResult(trials, top.lr, top.accuracy, (min(good), max(good)), tolerance)
