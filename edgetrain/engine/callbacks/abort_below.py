"""Abort a hopeless run: stop when the monitored metric is still below a floor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from edgetrain.engine.callback import Callback
from edgetrain.engine.callbacks.registry import CALLBACKS

if TYPE_CHECKING:
    from edgetrain.engine.trainer import Trainer

__all__ = ["AbortBelow"]


class AbortBelow(Callback):
    """Request a stop after epoch ``epoch`` when ``monitor`` is still below ``minimum``
    (e.g. accuracy < 30 % after 20 epochs: the learning rate will not recover)."""

    def __init__(self, epoch: int = 20, minimum: float = 30.0, monitor: str = "val_top1") -> None:
        self.epoch, self.minimum, self.monitor = epoch, minimum, monitor

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        record = trainer.state.last_record
        value = record.get(self.monitor)
        if value is not None and record["epoch"] >= self.epoch and value < self.minimum:
            trainer.state.stop_requested = True


@CALLBACKS.register("abort-below")
def abort_below(epoch: int = 20, minimum: float = 30.0, monitor: str = "val_top1") -> AbortBelow:
    """Stop a run whose ``monitor`` is still below ``minimum`` after ``epoch`` epochs."""
    return AbortBelow(epoch, minimum, monitor)
