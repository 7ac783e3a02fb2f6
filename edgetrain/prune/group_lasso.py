"""Group lasso over output and input channels, and the penalty-ratio rule for lambda.

For every conv/linear weight ``W`` (out x in x k...), one L2 group per output channel
and one per input channel::

    GL(W) = sum_c ||W[c, :, ...]||_2 + sum_k ||W[:, k, ...]||_2     (sqrt(sum w^2 + eps))

The first layer's input channels (the data's channels) and the classifier's output
channels (the classes) are never grouped: they cannot be removed. Driving a group to
zero makes the channel removable by :func:`~edgetrain.prune.reconfigure`.

Instead of a coefficient the user gives the *penalty ratio* LPR in (0, 1), the share of
the total loss the penalty should have at the start:
``lambda = LPR * loss / ((1 - LPR) * GL)``, computed once on the first mini-batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgetrain.errors import ConfigError
from edgetrain.models import parameter_layers

__all__ = ["GroupLassoLayer", "group_lasso", "lasso_layers", "penalty_lambda"]

EPS = 1e-8


@dataclass(frozen=True)
class GroupLassoLayer:
    """One weight layer's share of the penalty: whether its output and input channels
    are grouped."""

    name: str
    module: nn.Module
    outputs: bool
    inputs: bool


def lasso_layers(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> list[GroupLassoLayer]:
    """The conv/linear layers in forward order with the groups each contributes (the first
    layer's inputs and the last layer's outputs excluded)."""
    layers = parameter_layers(model, input_shape)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no conv/linear layer to regularise")
    last = len(layers) - 1
    return [
        GroupLassoLayer(name, module, outputs=i != last, inputs=i != 0)
        for i, (name, module) in enumerate(layers)
    ]


def _group_norms(weight: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    other = [d for d in range(weight.dim()) if d != dim]
    return torch.sqrt(weight.pow(2).sum(dim=other) + eps)


def group_lasso(
    model: nn.Module | Sequence[GroupLassoLayer],
    *,
    weighted: bool = False,
    eps: float = EPS,
) -> torch.Tensor:
    """The group-lasso penalty of ``model`` (differentiable).

    Args:
        model: a model, or the layers of :func:`lasso_layers` (faster when called every
            step: the forward order is found once).
        weighted: weight each group by sqrt(group size), the variant of Yuan & Lin.
        eps: inside the square root, keeps the gradient finite at zero.

    Example:
        >>> from edgetrain.models import create
        >>> float(group_lasso(create("small_cnn"))) > 0
        True
    """
    layers = lasso_layers(model) if isinstance(model, nn.Module) else model
    total: torch.Tensor | None = None
    for layer in layers:
        w = layer.module.weight
        parts = []
        if layer.outputs:
            scale = math.sqrt(w[0].numel()) if weighted else 1.0
            parts.append(scale * _group_norms(w, 0, eps).sum())
        if layer.inputs:
            scale = math.sqrt(w[:, 0].numel()) if weighted else 1.0
            parts.append(scale * _group_norms(w, 1, eps).sum())
        for part in parts:
            total = part if total is None else total + part
    if total is None:
        raise ConfigError("group_lasso: the model has a single layer; nothing can be grouped")
    return total


def penalty_lambda(ratio: float, loss: float, penalty: float) -> float:
    """``lambda = LPR * loss / ((1 - LPR) * GL)``: the coefficient that makes the penalty
    the fraction ``ratio`` of the total loss at the point it is computed.

    Example:
        >>> penalty_lambda(0.2, loss=2.0, penalty=100.0)
        0.005
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"penalty ratio must be in (0, 1), got {ratio}; e.g. 0.2")
    if penalty <= 0:
        raise ConfigError("group-lasso penalty is zero (all weights zero); nothing to regularise")
    return ratio * loss / ((1.0 - ratio) * penalty)
