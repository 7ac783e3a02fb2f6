"""Writes ``metrics.jsonl`` (one flushed line per epoch) and ``summary.json``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from torch import nn

from edgetrain.engine.callback import Callback
from edgetrain.engine.rundir import RunDirectory

if TYPE_CHECKING:
    from edgetrain.engine.trainer import Trainer

__all__ = ["MetricsLogger"]


class MetricsLogger(Callback):
    """Log each epoch's record and write the run summary at the end.

    ``summary.json`` carries ``status``: ``completed``, ``stopped`` (a callback ended the
    run early), ``interrupted`` (Ctrl-C / SIGTERM) or ``failed``, so a partial run is
    never mistaken for a finished one.
    """

    def __init__(self, run_dir: RunDirectory, monitor: str = "val_top1", mode: str = "max") -> None:
        self.run_dir = run_dir
        self.monitor, self.mode = monitor, mode
        self._started = 0.0

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        self._started = time.perf_counter()
        done = trainer.state.epoch
        kept = self.run_dir.metrics.keep(lambda r: done > 0 and r.get("epoch", 0) <= done)
        # An epoch whose checkpoint was written but whose line was not (a kill between the
        # two): the checkpoint's history has its record, so the log gets it back.
        logged = {r.get("epoch") for r in kept}
        for record in trainer.state.history:
            if record.get("epoch", 0) <= done and record.get("epoch") not in logged:
                self.run_dir.append_metrics(record)
        self._write_summary(trainer, model, "running")

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        self.run_dir.append_metrics(trainer.state.last_record)

    def on_fit_end(self, trainer: Trainer, model: nn.Module) -> None:
        status = "stopped" if trainer.state.stop_requested else "completed"
        self._write_summary(trainer, model, status)

    def on_exception(self, trainer: Trainer, model: nn.Module, error: BaseException) -> None:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        self._write_summary(trainer, model, status, error)

    def _write_summary(
        self, trainer: Trainer, model: nn.Module, status: str, error: BaseException | None = None
    ) -> None:
        state = trainer.state
        summary: dict[str, Any] = {
            "status": status,
            "epochs_finished": state.epoch,
            "epochs_planned": state.max_epochs,
            "global_step": state.global_step,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "device": str(trainer.device),
            "fit_seconds": round(time.perf_counter() - self._started, 3),
        }
        best = state.best(self.monitor, self.mode)
        if best is not None:
            summary["best"] = {"epoch": best["epoch"], self.monitor: best[self.monitor]}
        if state.history:
            summary["final"] = state.last_record
        if error is not None:
            summary["error"] = f"{type(error).__name__}: {error}"
        self.run_dir.write_summary(summary)
