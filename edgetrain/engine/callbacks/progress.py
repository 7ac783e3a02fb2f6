"""A rich progress bar over epochs and batches, with the latest metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
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
    """Two bars (epochs, batches of the current epoch) and a line of metrics per epoch."""

    def __init__(self, console: Console | None = None, description: str = "train") -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self._progress: Progress | None = None
        self._epochs = self._batches = None

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

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        if self._progress is not None:
            self._progress.advance(self._batches)

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        if self._progress is None:
            return
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
