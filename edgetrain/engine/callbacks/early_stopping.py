"""Stop training when a monitored metric has not improved for ``patience`` epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from edgetrain.engine.callback import Callback
from edgetrain.engine.callbacks.registry import CALLBACKS

if TYPE_CHECKING:
    from edgetrain.engine.trainer import Trainer

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Request a stop after ``patience`` epochs without an improvement above ``min_delta``."""

    def __init__(
        self,
        monitor: str = "val_top1",
        mode: str = "max",
        patience: int = 5,
        min_delta: float = 0.0,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        value = trainer.state.last_record.get(self.monitor)
        if value is None:
            return
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.state.stop_requested = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state.get("best"), int(state.get("bad_epochs", 0))


@CALLBACKS.register("early-stopping")
def early_stopping(
    monitor: str = "val_top1", mode: str = "max", patience: int = 5, min_delta: float = 0.0
) -> EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""
    return EarlyStopping(monitor, mode, patience, min_delta)
