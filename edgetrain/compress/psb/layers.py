"""PSB conv and linear layers: ``nn.Conv2d`` / ``nn.Linear`` that keep the real weights as
their parameters and draw a fresh weight sample at every forward, in training and in
evaluation alike; :func:`to_psb` converts a trained model in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain._modules import select_modules
from edgetrain.compress.psb.format import (
    FIXED_POINT_BITS,
    PSBConfig,
    _draw,
    _split,
    prune_mask,
    to_fixed_point,
)
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.finetune.fold import fold_batchnorm

__all__ = ["PSBConv2d", "PSBLinear", "psb_layers", "set_samples", "to_psb"]


class _PSBLayer(nn.Module):
    """What PSB conv and linear layers share: the config, the prune mask, the sampling."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    prune_mask: torch.Tensor
    psb: PSBConfig

    def __init__(self, *args: Any, psb: PSBConfig | None = None, **kwargs: Any) -> None:
        # the float layer's constructor comes next in the method order of a subclass
        super().__init__(*args, **kwargs)
        self._init_psb(psb or PSBConfig())

    def _init_psb(self, config: PSBConfig) -> None:
        self.psb = config
        self.register_buffer("prune_mask", prune_mask(self.weight, config.prune))
        with torch.no_grad():
            self.weight.mul_(self.prune_mask)

    def weight_sample(self) -> torch.Tensor:
        """This forward's weights: a sample of the pruned real weights, whose gradient
        reaches the real (unpruned) weights unchanged (straight-through).

        The split of the weights into ``s * 2^e`` and ``p`` is kept between forwards
        until the weights change; change them through the parameter (optimizer steps,
        ``load_state_dict``, in-place ops under ``torch.no_grad()``), not in place
        through ``.data``, which hides the change.
        """
        w = self.weight * self.prune_mask
        if w.is_meta:  # shape tracing (cost model): values do not matter
            return w
        if self.psb.samples == 0 and self.psb.p_bits is None:
            return w
        with torch.no_grad():
            drawn = _draw(*self._parts(w), self.psb.samples)
        return w + (drawn - w).detach()

    def _parts(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`_split` of the weights, kept until they change (an optimizer step, a
        load or a move bumps the version or the storage)."""
        key = (
            self.weight._version,
            self.weight.data_ptr(),
            self.prune_mask._version,
            self.psb.p_bits,
        )
        if self.__dict__.get("_split_key") != key:
            self._split_key = key
            self._split_parts = _split(w.detach(), self.psb.p_bits)
        return self._split_parts

    def _fix(self, x: torch.Tensor) -> torch.Tensor:
        if self.psb.fixed_point is None:
            return x
        return to_fixed_point(x, self.psb.fixed_point)

    def _fixed_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self._fix(self.bias)

    def extra_repr(self) -> str:
        c = self.psb
        parts = [super().extra_repr(), f"samples={c.samples}"]
        if c.fixed_point is not None:
            parts.append(f"fixed_point=Q{FIXED_POINT_BITS - 1 - c.fixed_point}.{c.fixed_point}")
        if c.prune:
            parts.append(f"prune={c.prune:g}")
        if c.p_bits is not None:
            parts.append(f"p_bits={c.p_bits}")
        return ", ".join(parts)


class PSBConv2d(_PSBLayer, nn.Conv2d):
    """``nn.Conv2d`` whose weights are PSB-sampled at every forward.

    Example:
        >>> conv = PSBConv2d.from_float(nn.Conv2d(3, 8, 3), PSBConfig(samples=4))
        >>> conv(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 8, 6, 6])
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config: PSBConfig) -> PSBConv2d:
        """A PSB copy of ``conv`` (same geometry, device and weights)."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            psb=PSBConfig(samples=config.samples),
        )
        _copy_weights(layer, conv, config)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(self._fix(x), self.weight_sample(), self._fixed_bias())
        return self._fix(out)


class PSBLinear(_PSBLayer, nn.Linear):
    """``nn.Linear`` whose weights are PSB-sampled at every forward.

    Example:
        >>> fc = PSBLinear.from_float(nn.Linear(16, 4), PSBConfig(samples=2, fixed_point=8))
        >>> fc(torch.randn(5, 16)).shape
        torch.Size([5, 4])
    """

    @classmethod
    def from_float(cls, linear: nn.Linear, config: PSBConfig) -> PSBLinear:
        """A PSB copy of ``linear`` (same shape, device and weights)."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            psb=PSBConfig(samples=config.samples),
        )
        _copy_weights(layer, linear, config)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fix(F.linear(self._fix(x), self.weight_sample(), self._fixed_bias()))


def _copy_weights(layer: _PSBLayer, source: nn.Module, config: PSBConfig) -> None:
    with torch.no_grad():
        layer.weight.copy_(source.weight)
        if layer.bias is not None:
            layer.bias.copy_(source.bias)
    layer.weight.requires_grad_(source.weight.requires_grad)
    layer._init_psb(config)  # the prune mask comes from the real weights


_FLOAT_TO_PSB: dict[type[nn.Module], type[_PSBLayer]] = {
    nn.Conv2d: PSBConv2d,
    nn.Linear: PSBLinear,
    PSBConv2d: PSBConv2d,
    PSBLinear: PSBLinear,
}


def psb_layers(model: nn.Module) -> list[tuple[str, _PSBLayer]]:
    """The model's PSB layers ``(name, module)``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _PSBLayer)]


def set_samples(model: nn.Module, samples: int) -> int:
    """Set the weight samples per forward of every PSB layer; returns the layer count.

    Raises:
        ConfigError: ``samples`` is not an integer >= 0, or the model has no PSB layer.
    """
    layers = psb_layers(model)
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no PSB layer; convert it first with to_psb(model)"
        )
    for _, layer in layers:
        layer.psb = replace(layer.psb, samples=samples)
    return len(layers)


def _targets(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Names of the conv2d/linear layers to convert (all of them by default)."""
    if layers is None:
        return [n for n, m in model.named_modules() if type(m) in _FLOAT_TO_PSB]
    try:
        chosen = select_modules(model, list(layers))
    except EdgetrainError as exc:
        raise ConfigError(f"psb layers: {exc}") from None
    for name, module in chosen:
        if type(module) not in _FLOAT_TO_PSB:
            raise ConfigError(
                f"psb layers: '{name}' is a {type(module).__name__}; PSB converts nn.Conv2d "
                "and nn.Linear layers only"
            )
    return [n for n, _ in chosen]


def _convert(
    model: nn.Module,
    config: PSBConfig,
    layers: Sequence[str] | None,
    input_shape: Sequence[int] | None,
) -> tuple[list[str], list[str]]:
    """Fold batch-norm, then swap the target layers for PSB ones; (folded, converted)."""
    names = _targets(model, layers)
    if not names:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer for PSB to convert"
        )
    folded: list[str] = []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        shape = input_shape or getattr(model, "input_shape", None)
        if not shape:
            raise ConfigError(
                "to_psb folds batch-norm with one forward pass: pass input_shape (one "
                "sample's shape, e.g. (3, 32, 32)) for a model without .input_shape"
            )
        folded = fold_batchnorm(model, tuple(shape))
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        module = owner.get_submodule(child)
        setattr(owner, child, _FLOAT_TO_PSB[type(module)].from_float(module, config))
    return folded, names


def to_psb(
    model: nn.Module,
    samples: int = 8,
    *,
    fixed_point: int | None = None,
    prune: float = 0.0,
    p_bits: int | None = None,
    layers: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Convert a trained model to PSB in place: fold batch-norm, then replace its
    ``nn.Conv2d`` / ``nn.Linear`` layers by :class:`PSBConv2d` / :class:`PSBLinear`.

    Batch-norms that directly follow a conv/linear are folded into it (eval-mode exact,
    :func:`~edgetrain.finetune.fold.fold_batchnorm`); others stay float batch-norms.
    Converting a PSB model again replaces its settings (the prune mask is recomputed).

    Args:
        model: the trained network (changed in place).
        samples: weight samples per forward; 0 uses the expected weights.
        fixed_point: fractional bits of 16-bit fixed-point intermediates (None: float).
        prune: fraction of each layer's smallest weights set to zero, in [0, 1).
        p_bits: bits kept of the mantissa fraction ``p`` (None: all).
        layers: names, globs or ``re:`` patterns of the layers to convert (default: every
            conv2d and linear layer).
        input_shape: one sample's shape, to fold batch-norm (default ``model.input_shape``).

    Returns:
        ``model``.

    Raises:
        ConfigError: a bad option, a pattern matching nothing or a layer PSB cannot
            convert, or batch-norm to fold without a known input shape. The model is
            unchanged when the error is raised.

    Example:
        >>> from edgetrain.models import create
        >>> net = to_psb(create("resnet20"), samples=8, prune=0.25)
        >>> len(psb_layers(net))
        22
    """
    config = PSBConfig(samples, fixed_point, prune, p_bits)
    _convert(model, config, layers, input_shape)
    return model
