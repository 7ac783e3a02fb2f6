"""The :class:`Callback` base: the only way a technique reaches the training loop.

Every hook is a no-op by default and is called as ``hook(trainer, model, ...)`` where
``model`` is the unwrapped module being trained. Callbacks that hold state for resume
implement :meth:`Callback.state_dict` / :meth:`Callback.load_state_dict`; the Trainer
stores them in its checkpoints under :attr:`Callback.state_key`.

Before training, when the Trainer is built: ``configure_model`` (change the model in
place: fold layers, freeze) and ``param_groups`` (the optimizer's parameter groups).
When a checkpoint is loaded: ``on_load_checkpoint``, before its weights (a technique
that changed the architecture reshapes the fresh model to the saved one).

Order of the hooks in one epoch::

    on_fit_start
      on_epoch_start
        on_batch_start -> before_forward -> on_loss -> after_backward
          -> before_optimizer_step -> on_batch_end          (per batch)
        on_validation_end
      on_epoch_end
    on_fit_end                          (on_exception instead, when an error escapes)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from edgetrain.engine.trainer import Trainer

__all__ = ["Callback"]


class Callback:
    """Base class with no-op hooks (Lightning-style, about a dozen hooks)."""

    @property
    def state_key(self) -> str:
        """Key of this callback's state in checkpoints (class name by default)."""
        return type(self).__qualname__

    def configure_model(self, trainer: Trainer, model: nn.Module) -> None:
        """Change the model in place before the optimizer is built (fold, freeze)."""

    def param_groups(self, trainer: Trainer, model: nn.Module) -> list[dict[str, Any]] | None:
        """Parameter groups for the optimizer (e.g. one per layer for per-layer rates);
        the first callback returning groups wins, None keeps one group."""
        return None

    def on_load_checkpoint(
        self, trainer: Trainer, model: nn.Module, checkpoint: dict[str, Any]
    ) -> None:
        """Before a checkpoint's weights are loaded: reshape ``model`` in place to the
        architecture the checkpoint records, when this callback's technique changed it."""

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        """Before the first epoch (also when resuming)."""

    def on_fit_end(self, trainer: Trainer, model: nn.Module) -> None:
        """After the last epoch, when training ended normally."""

    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        """At the start of each training epoch, model in train mode."""

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        """After validation; ``trainer.state.last_record`` holds the epoch's metrics."""

    def on_batch_start(self, trainer: Trainer, model: nn.Module, batch: Any, index: int) -> None:
        """Before a batch is moved to the device."""

    def before_forward(self, trainer: Trainer, model: nn.Module, inputs: torch.Tensor) -> None:
        """Right before the forward pass (set ``requires_grad`` here)."""

    def on_loss(
        self, trainer: Trainer, model: nn.Module, loss: torch.Tensor
    ) -> torch.Tensor | None:
        """After the loss is computed; return a new loss to add a penalty term."""
        return None

    def after_backward(self, trainer: Trainer, model: nn.Module) -> None:
        """After ``loss.backward()``: gradients exist (add regulariser gradients here)."""

    def before_optimizer_step(
        self, trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        """Right before ``optimizer.step()`` (mask or rescale gradients here)."""

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        """After the optimizer step."""

    def on_validation_end(
        self, trainer: Trainer, model: nn.Module, metrics: dict[str, float]
    ) -> None:
        """After the per-epoch evaluation with its metrics (``val_loss``, ``val_top1`` ...)."""

    def on_exception(self, trainer: Trainer, model: nn.Module, error: BaseException) -> None:
        """When an exception (including Ctrl-C) escapes the loop."""

    def state_dict(self) -> dict[str, Any]:
        """State to restore on resume (tensors, numbers, strings, lists, dicts only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
