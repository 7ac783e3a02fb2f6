"""The model zoo: small nets for edge devices, a parametric CIFAR ResNet, layer ordering.

Example:
    >>> from edgetrain import models
    >>> net = models.create("vgg_small", in_channels=3, num_classes=10)
    >>> sum(p.numel() for p in net.parameters())
    82330
"""

from __future__ import annotations

from edgetrain.models.layers import (
    WEIGHT_LAYER_TYPES,
    ZooModel,
    freeze,
    init_weights,
    parameter_layers,
    select_modules,
)
from edgetrain.models.registry import MODELS, create, list_models

__all__ = [
    "MODELS",
    "WEIGHT_LAYER_TYPES",
    "ZooModel",
    "create",
    "freeze",
    "init_weights",
    "list_models",
    "parameter_layers",
    "select_modules",
]
