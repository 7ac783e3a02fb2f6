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
    output_layers,
    parameter_layers,
    select_modules,
)
from edgetrain.models.registry import MODELS, list_models
from edgetrain.models.spec import ModelSpec, create, is_model_spec, resolve_model

__all__ = [
    "MODELS",
    "ModelSpec",
    "WEIGHT_LAYER_TYPES",
    "ZooModel",
    "create",
    "freeze",
    "init_weights",
    "is_model_spec",
    "output_layers",
    "list_models",
    "parameter_layers",
    "resolve_model",
    "select_modules",
]
