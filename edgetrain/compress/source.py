"""Evaluating a model on a data set without training (test loss, top-1, top-5)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain.engine.evaluate import evaluate

__all__ = ["evaluate_model"]


def evaluate_model(
    model: nn.Module, dataset: Dataset[Any], batch_size: int = 256, device: str = "cpu"
) -> dict[str, float]:
    """Test loss and top-1/top-5 (percent) of ``model`` on ``dataset`` (no training).

    Any map-style data set of ``(input, label)`` pairs works (a ``TensorDataset``, a
    user's own); edgetrain's data sets also say their class count (top-5 needs 6+).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    dev = torch.device(device)
    model.to(dev)
    classes = getattr(getattr(dataset, "info", None), "num_classes", None)
    return evaluate(model, loader, torch.nn.CrossEntropyLoss(), dev, classes)
