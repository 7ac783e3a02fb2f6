"""Atomic checkpoints at epoch end: ``last.pt`` (full resume state) and ``best.pt``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from edgetrain.engine.callback import Callback
from edgetrain.engine.checkpoint import atomic_save
from edgetrain.engine.rundir import RunDirectory

if TYPE_CHECKING:
    from edgetrain.engine.trainer import Trainer

__all__ = ["Checkpointer"]


class Checkpointer(Callback):
    """Save ``checkpoints/last.pt`` every ``every`` epochs (and at the last epoch), and
    ``checkpoints/best.pt`` whenever ``monitor`` improves.

    ``last.pt`` holds everything a resume needs (model, optimizer, scheduler, callbacks,
    trainer state); ``best.pt`` the same, taken at the best epoch.
    """

    def __init__(
        self, run_dir: RunDirectory, every: int = 1, monitor: str = "val_top1", mode: str = "max"
    ) -> None:
        if every < 1:
            raise ValueError(f"checkpoint interval must be >= 1, got {every}")
        self.run_dir, self.every = run_dir, every
        self.monitor, self.mode = monitor, mode
        self.best_value: float | None = None

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        state = trainer.state
        last_epoch = state.epoch >= state.max_epochs or state.stop_requested
        value = state.last_record.get(self.monitor)
        improved = value is not None and (
            self.best_value is None
            or (value > self.best_value if self.mode == "max" else value < self.best_value)
        )
        if improved:
            self.best_value = value
        if not (improved or last_epoch or state.epoch % self.every == 0):
            return
        payload = trainer.checkpoint_state()
        if last_epoch or state.epoch % self.every == 0:
            atomic_save(payload, self.run_dir.checkpoints / "last.pt")
        if improved:
            atomic_save(payload, self.run_dir.checkpoints / "best.pt")

    def state_dict(self) -> dict:
        return {"best_value": self.best_value}

    def load_state_dict(self, state: dict) -> None:
        self.best_value = state.get("best_value")
