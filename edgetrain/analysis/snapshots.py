"""Per-layer weight snapshots at the start and after every epoch of a run.

Saved as ``<run>/snapshots/epoch_<e>.pt`` (a dict layer -> float32 weights on the CPU,
written atomically; epoch 0 is the start), so similarity analyses read a run directory
alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgetrain.engine import CALLBACKS, Callback, atomic_save
from edgetrain.errors import EdgetrainError

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = ["WeightSnapshots", "layer_weights", "load_snapshots"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights (and bias) of every conv/linear layer, flattened into one vector each."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            parts = [module.weight.detach().reshape(-1)]
            if module.bias is not None:
                parts.append(module.bias.detach().reshape(-1))
            out[name] = torch.cat(parts).float().cpu().clone()
    return out


class WeightSnapshots(Callback):
    """Save :func:`layer_weights` at fit start (epoch 0, first fit only) and every epoch."""

    def _save(self, trainer: Trainer, model: nn.Module, epoch: int) -> None:
        if trainer.run_dir is None or not trainer.is_main:
            return
        path = trainer.run_dir.path / "snapshots" / f"epoch_{epoch:04d}.pt"
        atomic_save(layer_weights(model), path)

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        if trainer.state.epoch == 0:
            self._save(trainer, model, 0)

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        self._save(trainer, model, trainer.state.epoch)


@CALLBACKS.register("weight-snapshots")
def weight_snapshots() -> WeightSnapshots:
    """Save per-layer weights at the start and after every epoch (similarity analysis)."""
    return WeightSnapshots()


def load_snapshots(run_dir: str | Path) -> dict[int, dict[str, torch.Tensor]]:
    """All snapshots of a run: epoch -> layer -> weights."""
    folder = Path(run_dir) / "snapshots"
    files = sorted(folder.glob("epoch_*.pt")) if folder.is_dir() else []
    if not files:
        raise EdgetrainError(
            f"'{run_dir}' has no weight snapshots; train it with the 'weight-snapshots' "
            "callback (callbacks: [{name: weight-snapshots}])"
        )
    return {
        int(f.stem.split("_")[1]): torch.load(f, map_location="cpu", weights_only=True)
        for f in files
    }
