"""A rich progress bar over epochs and batches, with the latest metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from edgetrain.engine.callback import Callback

if TYPE_CHECKING:
    from edgetrain.engine.trainer import Trainer

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """Two bars (epochs, batches of the current epoch) and a line of metrics per epoch.

    The batch bar is advanced at most every ``refresh`` seconds: updating rich's task on
    every batch costs about 0.1 ms, which is several percent of a batch-1 step.
    """

    def __init__(
        self, console: Console | None = None, description: str = "train", refresh: float = 0.1
    ) -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self.refresh = refresh
        self._progress: Progress | None = None
        self._epochs = self._batches = TaskID(0)
        self._pending = 0
        self._last = 0.0

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        state = trainer.state
        self._epochs = self._progress.add_task(
            f"{self.description} epochs", total=state.max_epochs, completed=state.epoch, info=""
        )
        self._batches = self._progress.add_task("batches", total=trainer.steps_per_epoch, info="")

    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        if self._progress is not None:
            self._progress.reset(self._batches, total=trainer.steps_per_epoch)
        self._pending, self._last = 0, time.monotonic()

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        self._pending += 1
        now = time.monotonic()
        if now - self._last >= self.refresh and self._progress is not None:
            self._progress.advance(self._batches, self._pending)
            self._pending, self._last = 0, now

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        if self._progress is None:
            return
        self._progress.advance(self._batches, self._pending)
        self._pending = 0
        r = trainer.state.last_record
        info = f"loss {r.get('train_loss', float('nan')):.4f}"
        if "val_top1" in r:
            info += f"  val top-1 {r['val_top1']:.2f}%"
        self._progress.update(self._epochs, completed=trainer.state.epoch, info=info)

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_fit_end(self, trainer: Trainer, model: nn.Module) -> None:
        self._stop()

    def on_exception(self, trainer: Trainer, model: nn.Module, error: BaseException) -> None:
        self._stop()
