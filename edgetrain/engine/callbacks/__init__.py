"""Built-in callbacks: metrics logging, checkpoints, progress, early stopping, aborts."""

from __future__ import annotations

from edgetrain.engine.callbacks.abort_below import AbortBelow
from edgetrain.engine.callbacks.checkpointer import Checkpointer
from edgetrain.engine.callbacks.early_stopping import EarlyStopping
from edgetrain.engine.callbacks.metrics_logger import MetricsLogger
from edgetrain.engine.callbacks.progress import ProgressBar
from edgetrain.engine.callbacks.registry import CALLBACKS, LR_CONTROLLERS

__all__ = [
    "CALLBACKS",
    "LR_CONTROLLERS",
    "AbortBelow",
    "Checkpointer",
    "EarlyStopping",
    "MetricsLogger",
    "ProgressBar",
]
