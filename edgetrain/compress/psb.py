"""Progressive stochastic binarization (PSB) of conv and linear layers.

After the paper "Progressive Stochastic Binarization of Deep Networks": every weight is
replaced at each forward by the mean of ``n`` random signed powers of two whose
expectation is the weight (the number format is in :mod:`edgetrain.compress.psb_format`).

:class:`PSBConv2d` and :class:`PSBLinear` are ``nn.Conv2d`` / ``nn.Linear`` that keep the
real weights as their parameters and draw a fresh weight sample at every forward, in
training and in evaluation alike. Options
(:class:`~edgetrain.compress.psb_format.PSBConfig`):

- ``samples``: ``n`` above; ``0`` uses the expected weight (the limit of many samples).
- ``fixed_point``: the fractional bits ``f`` of 16-bit fixed-point intermediates. The
  activations entering and leaving each PSB layer, and its bias, are rounded to the
  nearest multiple of ``2^-f`` and saturated to the int16 range, i.e. the signed
  ``Q(15-f).f`` format (``f = 8``: Q7.8, range ``[-128, 128)``, step ``1/256``). Products
  and the accumulator are exact, as in a wide accumulator that is rounded once when the
  layer's output is stored.
- ``prune``: the fraction of each layer's smallest-magnitude weights set to zero (for
  example 0.25 or 0.5); they stay zero through fine-tuning.
- ``p_bits``: ``p`` rounded to ``p_bits`` bits (multiples of ``2^-p_bits``; rounding up
  to 1 carries into the exponent), e.g. 4, 2 or 1.

Training runs through a straight-through estimator: the forward uses the sample, the
backward passes the gradient to the real weights as if the sample were the real weight
(rounding to fixed point is passed straight through too).

:func:`to_psb` converts a trained model in place, folding batch-norm into the preceding
layers first; :func:`operation_cost` counts the shifts and adds one forward needs. The
recipe's number format ``psb`` (``number_format: {method: psb, samples: 8}``, applied by
:func:`~edgetrain.compress.apply` after pruning) is registered in :data:`NUMBER_FORMATS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain._modules import select_modules
from edgetrain.compress.psb_format import (
    FIXED_POINT_BITS,
    PSBConfig,
    _draw,
    _split,
    prune_mask,
    to_fixed_point,
)
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.finetune.fold import fold_batchnorm
from edgetrain.registry import Registry

__all__ = [
    "NUMBER_FORMATS",
    "LayerOps",
    "OperationCost",
    "PSBConv2d",
    "PSBLinear",
    "PSBReport",
    "operation_cost",
    "psb_layers",
    "set_samples",
    "to_psb",
]

# Number formats applied to the PyTorch model (not to an exported file), by recipe name:
# ``fn(model, *, example_input=None, **options) -> report`` with meta ``check(options)``
# (validates option values without a model), ``check_model(model, options)`` and
# ``exportable`` (whether ONNX can express the result).
NUMBER_FORMATS: Registry[Any] = Registry("number format")


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


@dataclass(frozen=True)
class LayerOps:
    """One PSB layer's work per input sample (one image) at ``samples`` weight samples.

    Attributes:
        products: activation x nonzero-weight products (MACs without the zero weights).
        outputs: output values.
        shifts: ``samples * products`` (one shift per product by a one-sample weight,
            ``s * 2^e`` or ``s * 2^(e+1)``) plus, when ``samples > 1``, one per output
            for the ``1/n`` scaling (a shift when ``n`` is a power of two, counted as one
            operation otherwise).
        adds: ``samples * products`` (accumulating each product, sign included).
    """

    name: str
    kind: str
    samples: int
    products: int
    outputs: int
    shifts: int
    adds: int


@dataclass
class OperationCost:
    """Shifts and adds of one forward of a PSB model, per input sample."""

    layers: list[LayerOps] = field(default_factory=list)

    @property
    def shifts(self) -> int:
        return sum(layer.shifts for layer in self.layers)

    @property
    def adds(self) -> int:
        return sum(layer.adds for layer in self.layers)

    @property
    def products(self) -> int:
        return sum(layer.products for layer in self.layers)

    def by_layer(self) -> dict[str, LayerOps]:
        return {layer.name: layer for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "shifts": self.shifts,
            "adds": self.adds,
            "products": self.products,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _layer_ops(name: str, layer: _PSBLayer, out: torch.Tensor, samples: int) -> LayerOps:
    """The :class:`LayerOps` of ``layer`` for one sample of its output ``out`` (batched)."""
    nonzero = int(torch.count_nonzero(layer.weight.detach() * layer.prune_mask))
    per_sample = out[0]
    # conv: every output position uses all of its channel's weights; linear: every row
    rows = per_sample[0].numel() if isinstance(layer, nn.Conv2d) else per_sample[..., 0].numel()
    products = rows * nonzero
    outputs = per_sample.numel()
    shifts = samples * products + (outputs if samples > 1 else 0)
    return LayerOps(
        name, type(layer).__name__, samples, products, outputs, shifts, samples * products
    )


def operation_cost(
    model: nn.Module, input_shape: Sequence[int] | None = None, samples: int | None = None
) -> OperationCost:
    """Count the shifts and adds of one forward of a PSB model, per input sample.

    Layers that are not PSB (pools, activations, remaining float layers) are not counted.

    Args:
        model: a model converted with :func:`to_psb`.
        input_shape: one sample's shape (default ``model.input_shape``).
        samples: count at this many weight samples (default: each layer's own).

    Raises:
        ConfigError: no PSB layer, no input shape, or 0 samples (expected weights are
            not powers of two: their products are multiplications).

    Example:
        >>> from edgetrain.models import create
        >>> net = to_psb(create("vgg_small"), samples=4)
        >>> cost = operation_cost(net)
        >>> cost.adds == 4 * cost.products
        True
    """
    layers = psb_layers(model)
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no PSB layer; convert it first with to_psb(model)"
        )
    shape = input_shape or getattr(model, "input_shape", None)
    if not shape:
        raise ConfigError("operation_cost needs input_shape for a model without .input_shape")
    found: list[LayerOps] = []
    handles = []
    for name, layer in layers:
        n = layer.psb.samples if samples is None else samples
        if n < 1:
            raise ConfigError(
                f"operation cost of '{name}' at {n} samples: expected weights are not powers "
                "of two; count at samples >= 1"
            )
        handles.append(
            layer.register_forward_hook(
                lambda m, _i, out, name=name, n=n: found.append(_layer_ops(name, m, out, n))
            )
        )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return OperationCost(found)


@dataclass
class PSBReport:
    """What the recipe method ``psb`` did: settings, folded batch-norms, converted layers,
    and the operation cost of one forward (per input sample)."""

    config: PSBConfig
    folded: list[str]
    layers: list[str]
    cost: OperationCost | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "psb",
            **asdict(self.config),
            "folded": list(self.folded),
            "layers": list(self.layers),
            "cost": None if self.cost is None else self.cost.to_dict(),
            "summary": self.summary(),
        }

    def summary(self) -> str:
        ops = (
            "expected weights (multiplications, not shift-add)"
            if self.cost is None
            else f"{self.cost.shifts:,} shifts and {self.cost.adds:,} adds per input"
        )
        return (
            f"psb: {len(self.layers)} layers at {self.config.samples} samples "
            f"({len(self.folded)} batch-norms folded): {ops}"
        )


def _check_options(options: dict[str, Any]) -> None:
    PSBConfig(**{k: v for k, v in options.items() if k != "layers"})


def _check_model(model: nn.Module, options: dict[str, Any]) -> None:
    _targets(model, options.get("layers"))


@NUMBER_FORMATS.register("psb", check=_check_options, check_model=_check_model, exportable=False)
def psb(
    model: nn.Module,
    *,
    example_input: torch.Tensor | None = None,
    samples: int = 8,
    fixed_point: int | None = None,
    prune: float = 0.0,
    p_bits: int | None = None,
    layers: list[str] | None = None,
) -> PSBReport:
    """Progressive stochastic binarization: sampled power-of-two weights, shift-add only."""
    config = PSBConfig(samples, fixed_point, prune, p_bits)
    shape = tuple(example_input.shape[1:]) if example_input is not None else None
    folded, names = _convert(model, config, layers, shape)
    cost = operation_cost(model, shape) if samples > 0 else None
    return PSBReport(config, folded, names, cost)
