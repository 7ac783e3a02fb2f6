"""Fold batch-norm into the preceding convolution or linear layer (eval-mode exact).

On-device trainers fold batch-norm before fine-tuning: ``y = gamma * (W x + b - mu) /
sqrt(var + eps) + beta`` becomes one layer with ``W' = W * gamma / sqrt(var + eps)`` and
``b' = (b - mu) * gamma / sqrt(var + eps) + beta``; the batch-norm is replaced by an
identity. Pairs are found by running one forward: a batch-norm whose input tensor is the
output of a conv/linear module and the only op that reads it. A layer whose output also
feeds a concatenation, a residual add or another branch (DenseNet and pre-activation
blocks), or a layer or batch-norm that runs twice, is left alone with a warning naming
it: folding would change what the other readers see.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edgetrain._modules import eval_mode

__all__ = ["fold_batchnorm"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _Consumers(TorchDispatchMode):
    """Records which ops read each layer output, to tell a batch-norm that is its layer's
    only reader from one that shares the output (a concat, a residual add, a second
    branch): folding the latter would change what the other readers see."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[int, str] = {}  # id(layer output) -> layer name
        self.inside: list[str] = []  # the batch-norms being run, innermost last
        self.readers: dict[str, set[str]] = {}  # layer -> batch-norms / "other" reading it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        for t in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(t, torch.Tensor) and id(t) in self.outputs:
                reader = self.inside[-1] if self.inside else "another op"
                self.readers.setdefault(self.outputs[id(t)], set()).add(reader)
        return func(*args, **(kwargs or {}))


def _pairs(
    model: nn.Module, input_shape: Sequence[int]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(layer, batch-norm) names where the batch-norm directly normalises the layer and
    is the only reader of its output, and the reason each other pair cannot fold."""
    mode = _Consumers()
    kept: list[torch.Tensor] = []  # outputs stay alive, so their ids are not reused
    versions: dict[int, int] = {}
    calls: dict[str, int] = {}
    candidates: list[tuple[str, str]] = []
    handles = []

    def produced(name: str, out: torch.Tensor) -> None:
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, torch.Tensor):
            kept.append(out)
            mode.outputs[id(out)] = name
            versions[id(out)] = out._version

    def enter(name: str, x: torch.Tensor) -> None:
        calls[name] = calls.get(name, 0) + 1
        source = mode.outputs.get(id(x), "")
        # an in-place op between the layer and the batch-norm (ReLU(inplace=True)) breaks it
        if source and versions.get(id(x)) == x._version:
            candidates.append((source, name))
        mode.inside.append(name)

    def leave(*_: object) -> None:  # a hook returning a value would replace the output
        mode.inside.pop()

    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            handles.append(
                module.register_forward_hook(lambda _m, _i, out, n=name: produced(n, out))
            )
        if isinstance(module, _BN):
            handles.append(
                module.register_forward_pre_hook(lambda _m, args, n=name: enter(n, args[0]))
            )
            handles.append(module.register_forward_hook(leave))
    try:
        with eval_mode(model), torch.no_grad(), mode:
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    pairs, refused = [], {}
    for layer, bn in candidates:
        readers = mode.readers.get(layer, set())
        if calls.get(layer, 0) > 1 or calls.get(bn, 0) > 1:
            refused[bn] = f"'{layer}' or '{bn}' runs more than once per forward (shared weights)"
        elif readers != {bn}:
            others = sorted(readers - {bn})
            refused[bn] = f"the output of '{layer}' also feeds {', '.join(others)}"
        else:
            pairs.append((layer, bn))
    return pairs, refused


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
    pairs, refused = _pairs(model, shape)
    if refused:
        # Left as batch-norms: folding them would change the model's outputs.
        warnings.warn(
            "batch-norms not folded, the model is unchanged there: "
            + "; ".join(f"'{bn}': {why}" for bn, why in refused.items()),
            RuntimeWarning,
            stacklevel=2,
        )
    for layer_name, bn_name in pairs:
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
