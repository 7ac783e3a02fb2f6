"""The model zoo's registry and ``list_models(pattern)``; :func:`edgetrain.models.create`
builds zoo entries and model specs alike."""

from __future__ import annotations

from torch import nn

from edgetrain.registry import Registry

__all__ = ["MODELS", "list_models"]

MODELS: Registry[nn.Module] = Registry("model")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell pattern."""
    return MODELS.names(pattern)
