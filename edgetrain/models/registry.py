"""The model registry: ``create(name, **kw)`` and ``list_models(pattern)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetrain.registry import Registry

__all__ = ["MODELS", "create", "list_models"]

MODELS: Registry[nn.Module] = Registry("model")


def create(name: str, *, device: str | torch.device | None = None, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name``.

    Args:
        name: registry name (``edgetrain models`` lists them).
        device: build directly on this device; ``"meta"`` allocates no memory (analysis).
        **kwargs: model options such as ``in_channels`` and ``num_classes``.

    Example:
        >>> m = create("resnet20", num_classes=10, device="meta")
        >>> sum(p.numel() for p in m.parameters())
        272474
    """
    if device is None:
        return MODELS.create(name, **kwargs)
    with torch.device(device):
        return MODELS.create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell pattern."""
    return MODELS.names(pattern)
