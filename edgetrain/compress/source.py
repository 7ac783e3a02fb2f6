"""The trained run that compression starts from: model, config, checkpoint, test data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgetrain import data as data_sets
from edgetrain.data import ArrayDataset
from edgetrain.engine.checkpoint import load_checkpoint, resolve_checkpoint
from edgetrain.engine.config import RunConfig, load_config
from edgetrain.engine.evaluate import evaluate
from edgetrain.engine.run import load_trained_model
from edgetrain.engine.rundir import RunDirectory
from edgetrain.errors import ConfigError

__all__ = ["TrainedRun", "evaluate_model", "load_trained_run"]


@dataclass
class TrainedRun:
    """A trained model with what produced it.

    Attributes:
        model: the model in eval mode, weights loaded.
        config: the run's resolved config.
        architecture: the checkpoint's architecture record (zoo name and options, plus
            growth or pruning history), which compressed checkpoints carry on.
        checkpoint: the checkpoint file the weights came from.
        run_dir: the run directory.
    """

    model: nn.Module
    config: RunConfig
    architecture: dict[str, Any]
    checkpoint: Path
    run_dir: Path

    def test_data(self) -> ArrayDataset:
        """The run's evaluation split (same data set, options and shift as in training)."""
        d = self.config.data
        return data_sets.create(d.name, d.eval_split, shift=d.shift, **d.options)

    def train_data(self) -> ArrayDataset:
        """The run's training split without augmentation (calibration batches)."""
        d = self.config.data
        return data_sets.create(d.name, d.train_split, shift=d.shift, **d.options)


def load_trained_run(path: str | Path, prefer: str = "best") -> TrainedRun:
    """Load a run directory (``checkpoints/<prefer>.pt``) or a checkpoint inside one.

    Example:
        >>> run = load_trained_run("runs/digits-resnet20")  # doctest: +SKIP
    """
    file = resolve_checkpoint(path, prefer=prefer)
    run_dir = Path(path) if Path(path).is_dir() else file.parent.parent
    if not RunDirectory(run_dir).config_path.is_file():
        raise ConfigError(
            f"'{run_dir}' is not a run directory (no config.yaml next to checkpoints/); "
            "pass a folder written by 'edgetrain train'"
        )
    config = load_config(RunDirectory(run_dir).read_config())
    model = load_trained_model(file)
    architecture = dict(load_checkpoint(file).get("architecture") or {})
    return TrainedRun(model, config, architecture, file, run_dir)


def evaluate_model(
    model: nn.Module, dataset: ArrayDataset, batch_size: int = 256, device: str = "cpu"
) -> dict[str, float]:
    """Test loss and top-1/top-5 (percent) of ``model`` on ``dataset`` (no training)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    dev = torch.device(device)
    model.to(dev)
    return evaluate(model, loader, torch.nn.CrossEntropyLoss(), dev, dataset.info.num_classes)
