"""Fold batch-norm into the preceding convolution or linear layer (eval-mode exact).

On-device trainers fold batch-norm before fine-tuning: ``y = gamma * (W x + b - mu) /
sqrt(var + eps) + beta`` becomes one layer with ``W' = W * gamma / sqrt(var + eps)`` and
``b' = (b - mu) * gamma / sqrt(var + eps) + beta``; the batch-norm is replaced by an
identity. Pairs are found by running one forward: a batch-norm whose input tensor is the
output of a conv/linear module. (The layer's output must feed only that batch-norm, as in
every conv-BN block of the zoo.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["fold_batchnorm"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _source(produced: dict[int, tuple[str, torch.Tensor, int]], x: torch.Tensor) -> str:
    """The layer that produced ``x`` unchanged, or ``""``."""
    name, out, version = produced.get(id(x), ("", None, -1))
    return name if out is x and x._version == version else ""


def _pairs(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, str]]:
    """(layer, batch-norm) names where the batch-norm directly normalises the layer."""
    # Outputs are kept alive (so ids are not reused) with their version counter (so an
    # in-place op between the layer and the batch-norm, like ReLU(inplace=True), is seen).
    produced: dict[int, tuple[str, torch.Tensor, int]] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, n=name: produced.__setitem__(
                        id(out), (n, out, out._version)
                    )
                )
            )
        if isinstance(module, _BN):
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, args, n=name: pairs.append((_source(produced, args[0]), n))
                )
            )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(layer, bn) for layer, bn in pairs if layer]


def fold_batchnorm(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
    """Fold every batch-norm that directly follows a conv/linear into it, in place.

    Args:
        model: the network (outputs in eval mode are unchanged, up to float rounding).
        input_shape: one sample's shape (default ``model.input_shape``).

    Returns:
        The names of the folded batch-norms (now ``nn.Identity``).

    Example:
        >>> from edgetrain.models import create
        >>> net = create("resnet20")
        >>> len(fold_batchnorm(net))
        21
    """
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("fold_batchnorm needs input_shape for a model without .input_shape")
    modules = dict(model.named_modules())
    folded = []
    for layer_name, bn_name in _pairs(model, shape):
        layer, bn = modules[layer_name], modules[bn_name]
        if not bn.track_running_stats or bn.running_var is None:
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
            weight_shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.mul_(scale.reshape(weight_shape))
            bias = layer.bias * scale + shift if layer.bias is not None else shift
            layer.bias = nn.Parameter(bias.clone())
        parent_name, _, child = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, nn.Identity())
        folded.append(bn_name)
    return folded
