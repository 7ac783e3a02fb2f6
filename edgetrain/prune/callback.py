"""PruneTrain: group lasso during training, channel removal every few epochs.

The callback adds ``lambda * GL`` to the loss (or its gradient after backward), with
lambda fixed from the penalty ratio on the first mini-batch, and every ``interval``
epochs calls :func:`~edgetrain.prune.reconfigure` on the live model and the live
optimizer: the model shrinks, the optimizer keeps its momentum for the surviving
channels, the LR schedule carries on. Each epoch's metrics record the architecture it
trained (channels per layer, parameters, inference MACs, training MACs of the epoch and
of the unpruned baseline), which the report turns into plots.

The Trainer's ``architecture`` gains ``pruned: true`` and the bypassed blocks, so
checkpoints reload into the pruned shape
(see :func:`edgetrain.models.surgery.restore_architecture`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgetrain.cost import analyze
from edgetrain.engine import CALLBACKS, Callback
from edgetrain.errors import ConfigError
from edgetrain.models.surgery import restore_architecture
from edgetrain.prune.graph import example_input as default_input
from edgetrain.prune.group_lasso import GroupLassoLayer, group_lasso, lasso_layers, penalty_lambda
from edgetrain.prune.reconfigure import ReconfigureResult, reconfigure

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = ["PruneTrain"]

PENALTY_MODES = ("loss", "grad")


class PruneTrain(Callback):
    """Train-time structured pruning.

    Args:
        ratio: the group-lasso penalty ratio LPR in (0, 1).
        interval: epochs between reconfigurations.
        threshold: weights below it are zeroed before each reconfiguration.
        stop_epoch: last epoch after which a reconfiguration may happen (``None``: all).
        penalty: ``"loss"`` adds ``lambda * GL`` to the loss; ``"grad"`` adds its gradient
            to ``.grad`` after backward (the logged loss is then the task loss alone).
        weighted: weight each group by sqrt(group size).

    Example:
        >>> cb = PruneTrain(ratio=0.2, interval=10)
        >>> cb.interval, cb.threshold
        (10, 0.0001)
    """

    def __init__(
        self,
        ratio: float = 0.2,
        interval: int = 10,
        threshold: float = 1e-4,
        stop_epoch: int | None = None,
        penalty: str = "loss",
        weighted: bool = False,
    ) -> None:
        if not 0.0 < ratio < 1.0:
            raise ConfigError(f"PruneTrain ratio must be in (0, 1), got {ratio}; e.g. 0.2")
        if interval < 1:
            raise ConfigError(f"PruneTrain interval must be >= 1 epoch, got {interval}")
        if threshold < 0:
            raise ConfigError(f"PruneTrain threshold must be >= 0, got {threshold}")
        if penalty not in PENALTY_MODES:
            raise ConfigError(
                f"PruneTrain penalty must be one of {', '.join(PENALTY_MODES)}, got '{penalty}'"
            )
        self.ratio, self.interval, self.threshold = ratio, interval, threshold
        self.stop_epoch, self.penalty, self.weighted = stop_epoch, penalty, weighted
        self.lam: float | None = None
        self.bypassed: list[str] = []
        self.history: list[dict[str, Any]] = []
        self._layers: list[GroupLassoLayer] = []
        self._input_shape: tuple[int, ...] | None = None
        self._epoch_cost: tuple[int, int] | None = None  # (step MACs/sample, params)
        self._baseline_step_macs: int | None = None
        self._gl_sum = 0.0
        self._gl_steps = 0

    # ----------------------------------------------------------------- helpers
    def _costs(self, model: nn.Module) -> tuple[int, int, int]:
        """Training-step MACs per sample, inference MACs per sample, parameters."""
        report = analyze(model, self._input_shape or (), memory="layerwise")
        return (
            report.conventional.step_macs,
            report.total().forward_macs,
            sum(p.numel() for p in model.parameters()),
        )

    def _refresh(self, model: nn.Module) -> None:
        self._layers = lasso_layers(model, self._input_shape)
        self._epoch_cost = self._costs(model)[:2]

    # ------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        shape = getattr(model, "input_shape", None) or (trainer.architecture or {}).get(
            "input_shape"
        )
        if shape is None:
            raise ConfigError(
                f"PruneTrain needs the model's input shape; give {type(model).__name__} an "
                "input_shape attribute (zoo models have one)"
            )
        self._input_shape = tuple(shape)
        self._refresh(model)
        if self._baseline_step_macs is None:
            self._baseline_step_macs = self._epoch_cost[0] if self._epoch_cost else 0
        self._mark_architecture(trainer)

    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        self._gl_sum, self._gl_steps = 0.0, 0

    def on_loss(
        self, trainer: Trainer, model: nn.Module, loss: torch.Tensor
    ) -> torch.Tensor | None:
        if self.penalty != "loss" and self.lam is not None:
            return None
        gl = group_lasso(self._layers, weighted=self.weighted)
        if self.lam is None:
            self.lam = penalty_lambda(self.ratio, float(loss.detach()), float(gl.detach()))
        if self.penalty != "loss":
            return None
        self._gl_sum += float(gl.detach())
        self._gl_steps += 1
        return loss + self.lam * gl

    def after_backward(self, trainer: Trainer, model: nn.Module) -> None:
        if self.penalty != "grad" or self.lam is None:
            return
        weights = [
            layer.module.weight for layer in self._layers if layer.module.weight.requires_grad
        ]
        with torch.enable_grad():
            gl = group_lasso(self._layers, weighted=self.weighted)
            grads = torch.autograd.grad(gl, weights, allow_unused=True)
        for w, g in zip(weights, grads, strict=True):
            if g is None:
                continue
            if w.grad is None:
                w.grad = self.lam * g
            else:
                w.grad.add_(g, alpha=self.lam)
        self._gl_sum += float(gl.detach())
        self._gl_steps += 1

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        samples = _epoch_samples(trainer)
        step_macs, inference_macs = self._epoch_cost or (0, 0)
        values: dict[str, Any] = {
            "train_macs": step_macs * samples,
            "baseline_train_macs": (self._baseline_step_macs or 0) * samples,
            "inference_macs": inference_macs,
            "params": sum(p.numel() for p in model.parameters()),
            "group_lasso": self._gl_sum / max(self._gl_steps, 1),
            "lasso_lambda": self.lam or 0.0,
        }
        values["channels"] = {  # the architecture this epoch trained
            name: int(layer.module.weight.shape[0]) for name, layer in _named(self._layers)
        }
        epoch = trainer.state.epoch
        due = epoch % self.interval == 0 and (self.stop_epoch is None or epoch <= self.stop_epoch)
        if due:
            result = self.reconfigure(trainer, model)
            values.update(
                reconfigured=True,
                removed_channels=result.removed_channels,
                params_after=result.params_after,
                inference_macs_after=result.macs_after,
                channels_after={
                    name: int(layer.module.weight.shape[0]) for name, layer in _named(self._layers)
                },
            )
        trainer.log(**values)

    def reconfigure(self, trainer: Trainer, model: nn.Module) -> ReconfigureResult:
        """Reconfigure now (also callable by hand between epochs)."""
        example = default_input(model)
        result = reconfigure(model, trainer.optimizer, example, threshold=self.threshold)
        self.bypassed.extend(result.bypassed)
        trainer.replace_model(model)
        self._refresh(model)
        self._mark_architecture(trainer)
        self.history.append({"epoch": trainer.state.epoch, **result.to_dict()})
        return result

    def _mark_architecture(self, trainer: Trainer) -> None:
        arch = dict(trainer.architecture or {})
        arch["pruned"] = True
        arch["bypassed"] = list(self.bypassed)
        trainer.architecture = arch

    # -------------------------------------------------------------- resume
    def on_load_checkpoint(self, trainer: Trainer, model: nn.Module, checkpoint: dict) -> None:
        """Reshape the freshly built model to the pruned one the checkpoint holds."""
        arch = checkpoint.get("architecture") or {}
        if arch.get("pruned"):
            restore_architecture(model, checkpoint["model"], arch.get("bypassed", ()))

    def state_dict(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "bypassed": list(self.bypassed),
            "history": list(self.history),
            "baseline_step_macs": self._baseline_step_macs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = state.get("lam")
        self.bypassed = list(state.get("bypassed", []))
        self.history = list(state.get("history", []))
        self._baseline_step_macs = state.get("baseline_step_macs")


def _named(layers: list[GroupLassoLayer]) -> list[tuple[str, GroupLassoLayer]]:
    return [(layer.name, layer) for layer in layers]


def _epoch_samples(trainer: Trainer) -> int:
    loader = trainer.train_loader
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return trainer.steps_per_epoch * trainer.batch_size


@CALLBACKS.register("prunetrain")
def prunetrain(
    ratio: float = 0.2,
    interval: int = 10,
    threshold: float = 1e-4,
    stop_epoch: int | None = None,
    penalty: str = "loss",
    weighted: bool = False,
) -> PruneTrain:
    """Train-time structured pruning (group lasso + channel removal every ``interval`` epochs)."""
    return PruneTrain(ratio, interval, threshold, stop_epoch, penalty, weighted)
