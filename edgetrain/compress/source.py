"""Evaluating a model on a data set without training (test loss, top-1, top-5)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgetrain.data import ArrayDataset
from edgetrain.engine.evaluate import evaluate

__all__ = ["evaluate_model"]


def evaluate_model(
    model: nn.Module, dataset: ArrayDataset, batch_size: int = 256, device: str = "cpu"
) -> dict[str, float]:
    """Test loss and top-1/top-5 (percent) of ``model`` on ``dataset`` (no training)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    dev = torch.device(device)
    model.to(dev)
    return evaluate(model, loader, torch.nn.CrossEntropyLoss(), dev, dataset.info.num_classes)
