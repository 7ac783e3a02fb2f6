"""Early stopping of sweep trials with Optuna's pruners.

A trial's fine-tuning reports its test top-1 after every epoch to the Optuna trial
(:class:`TrialReporter`, a Trainer callback); the sweep's ``trial_pruner`` compares it
with the other trials' at the same epoch and stops a trial that is clearly worse: its
fine-tuning ends after that epoch, and the trial is recorded as *pruned* with its last
figures (epoch, top-1) instead of training its whole budget, exporting and benchmarking.

``TRIAL_PRUNERS`` (the ``trial_pruner: {name: ...}`` of a sweep config):

- ``median``: Optuna's MedianPruner (prune below the median of earlier trials at the
  same epoch; ``n_startup_trials``, ``n_warmup_steps``);
- ``successive_halving``: asynchronous successive halving (``min_resource``,
  ``reduction_factor``);
- ``hyperband``: Hyperband over successive-halving brackets up to the fine-tuning
  epochs (``min_resource``, ``reduction_factor``);
- ``none``: never prune (the default without a ``trial_pruner`` section).

The value reported is the top-1 for a sweep that maximises its objective and the
top-1 error (100 - top-1) for one that minimises it (latency): Optuna's pruners read
intermediate values in the study's direction. Multi-objective studies cannot prune
(Optuna has no pruning for them), and a config that asks for it is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from edgetrain._optional import require
from edgetrain.engine.callback import Callback
from edgetrain.registry import Registry

if TYPE_CHECKING:
    from edgetrain.engine.trainer import Trainer

__all__ = ["TRIAL_PRUNERS", "TrialReporter"]

TRIAL_PRUNERS: Registry[Any] = Registry("trial pruner")
"""Optuna pruners by name, each called as ``fn(max_resource, **options)`` with the
fine-tuning epochs as ``max_resource``; returns the pruner (None: no pruning)."""


@TRIAL_PRUNERS.register("none")
def _none(max_resource: int) -> None:
    """Never stop a trial early."""
    return None


@TRIAL_PRUNERS.register("median")
def _median(max_resource: int, n_startup_trials: int = 3, n_warmup_steps: int = 1) -> Any:
    """Stop a trial whose top-1 is below the median of earlier trials at the same epoch."""
    optuna = require("optuna", "search")
    return optuna.pruners.MedianPruner(
        n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps
    )


@TRIAL_PRUNERS.register("successive_halving")
def _successive_halving(max_resource: int, min_resource: int = 1, reduction_factor: int = 3) -> Any:
    """Asynchronous successive halving: keep the best 1/reduction_factor at each rung."""
    optuna = require("optuna", "search")
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_resource, reduction_factor=reduction_factor
    )


@TRIAL_PRUNERS.register("hyperband")
def _hyperband(max_resource: int, min_resource: int = 1, reduction_factor: int = 3) -> Any:
    """Hyperband: successive-halving brackets up to the fine-tuning epochs."""
    optuna = require("optuna", "search")
    return optuna.pruners.HyperbandPruner(
        min_resource=min_resource,
        max_resource=max(max_resource, min_resource),
        reduction_factor=reduction_factor,
    )


class TrialReporter(Callback):
    """Reports the test top-1 of every fine-tuning epoch to an Optuna trial and stops
    the fine-tuning when the study's pruner says so.

    Args:
        trial: the running Optuna trial.
        maximize: the study maximises its objective (report top-1), else it minimises
            (report the top-1 error).
    """

    def __init__(self, trial: Any, maximize: bool) -> None:
        self.trial = trial
        self.maximize = maximize
        self.pruned_at: int | None = None
        self.last: dict[str, Any] = {}

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        record = trainer.state.last_record
        top1 = record.get("val_top1")
        if top1 is None:
            return
        epoch = int(record["epoch"])
        self.last = {"epoch": epoch, "top1": float(top1), "loss": record.get("val_loss")}
        self.trial.report(float(top1) if self.maximize else 100.0 - float(top1), epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.state.stop_requested = True
