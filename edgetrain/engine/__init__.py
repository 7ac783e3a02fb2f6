"""The training engine: :class:`Trainer`, :class:`Callback`, checkpoints, run directories.

Example:
    >>> from edgetrain.engine import Trainer, Callback
    >>> class PrintLoss(Callback):
    ...     def on_epoch_end(self, trainer, model):
    ...         print(trainer.state.last_record["train_loss"])
"""

from __future__ import annotations

from edgetrain.engine.callback import Callback
from edgetrain.engine.callbacks import (
    CALLBACKS,
    LR_CONTROLLERS,
    Checkpointer,
    EarlyStopping,
    MetricsLogger,
    ProgressBar,
)
from edgetrain.engine.checkpoint import (
    atomic_save,
    load_checkpoint,
    load_model_weights,
    resolve_checkpoint,
)
from edgetrain.engine.evaluate import evaluate
from edgetrain.engine.jsonl import JsonLines
from edgetrain.engine.memory import keep_freed_memory
from edgetrain.engine.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from edgetrain.engine.rundir import RunDirectory
from edgetrain.engine.state import TrainState
from edgetrain.engine.trainer import Trainer, select_device

__all__ = [
    "CALLBACKS",
    "LR_CONTROLLERS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "Callback",
    "Checkpointer",
    "EarlyStopping",
    "JsonLines",
    "MetricsLogger",
    "ProgressBar",
    "RunDirectory",
    "TrainState",
    "Trainer",
    "atomic_save",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "keep_freed_memory",
    "load_checkpoint",
    "load_model_weights",
    "resolve_checkpoint",
    "select_device",
]
