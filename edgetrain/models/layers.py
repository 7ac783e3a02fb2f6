"""Parameter layers in forward order.

Freezing, layer schedules and the cost model all speak of "the last N layers", so every
model needs one ordered list of its weight layers (convolutions and linears; their
batch-norms travel with them). The order is the order in which a forward pass *uses*
them (reads their parameters), found by tracing one forward on the meta device (no real
memory is used), and falls back to registration order when no input shape is known.
The same trace finds the output layers: those whose outputs are the model's outputs.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edgetrain._modules import eval_mode, select_modules, structure_key

__all__ = [
    "WEIGHT_LAYER_TYPES",
    "ZooModel",
    "freeze",
    "init_weights",
    "output_layers",
    "parameter_layers",
    "select_modules",
]

WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
)


class _ParameterUse(TorchDispatchMode):
    """Follows one forward at the dispatch level: the order in which weight layers' own
    parameters are first read, and, for every tensor, the weight layers nearest upstream
    of it (an op reading a weight layer's parameters starts a new set; any other op passes
    on the union of its inputs' sets)."""

    def __init__(self, owners: dict[int, str]) -> None:
        super().__init__()
        self.owners = owners  # id(meta parameter, or a view of one) -> weight layer
        self.order: dict[str, int] = {}
        self.sources: dict[int, frozenset[str]] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        leaves = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        layers = {self.owners[id(t)] for t in leaves if id(t) in self.owners}
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        acts = [t for t in leaves if id(t) in self.sources]
        if layers and not acts:  # a view or cast of a weight: still that layer's weight
            for t in outs:
                self.owners[id(t)] = next(iter(layers))
                self.alive.append(t)
            return out
        for name in sorted(layers):
            self.order.setdefault(name, len(self.order))
        tag = (
            frozenset(layers) if layers else frozenset().union(*(self.sources[id(t)] for t in acts))
        )
        for t in outs:
            self.sources[id(t)] = tag
            self.alive.append(t)
        return out


_TRACES: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _trace(model: nn.Module, shape: Sequence[int]) -> tuple[_ParameterUse, list[frozenset[str]]]:
    """One meta-device forward under :class:`_ParameterUse`; also the sources of every
    output tensor. Kept per model while its modules and weight shapes stay the same
    (pruning traces a model several times; each trace of a MobileNet costs ~0.3 s)."""
    signature = structure_key(model, shape)
    cached = _TRACES.setdefault(model, {})
    if signature not in cached:
        cached.clear()  # one entry: the model as it is now
        cached[signature] = _run_trace(model, shape)
    return cached[signature]


def _run_trace(
    model: nn.Module, shape: Sequence[int]
) -> tuple[_ParameterUse, list[frozenset[str]]]:
    layers = {n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)}
    meta: dict[str, torch.Tensor] = {}
    owners: dict[int, str] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        meta[name] = torch.empty_like(tensor, device="meta")
        owner = name.rpartition(".")[0]
        if owner in layers:
            owners[id(meta[name])] = owner
    mode = _ParameterUse(owners)
    x = torch.empty(1, *shape, device="meta")
    mode.sources[id(x)] = frozenset()
    with eval_mode(model), torch.no_grad(), mode:
        output = torch.func.functional_call(model, meta, (x,))
    outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    return mode, [mode.sources.get(id(t), frozenset()) for t in outs]


def parameter_layers(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> list[tuple[str, nn.Module]]:
    """The model's weight layers ``(name, module)`` in the order a forward pass uses them.

    A layer's place is where its parameters are first read, so a layer whose weights a
    parent module uses directly (``nn.MultiheadAttention``'s ``out_proj``) is ordered
    where it runs, not after the classifier.

    Args:
        model: any module.
        input_shape: one sample's shape without the batch dimension, e.g. ``(3, 32, 32)``.
            Defaults to ``model.input_shape`` when the model has one.

    Example:
        >>> from edgetrain.models import create
        >>> [n for n, _ in parameter_layers(create("vgg_small"))][-2:]
        ['conv6', 'fc']
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)]
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        return layers
    mode, _ = _trace(model, shape)
    # Layers the forward never used (dead branches) keep registration order at the end.
    return sorted(layers, key=lambda nm: mode.order.get(nm[0], len(mode.order)))


def output_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
    """The weight layers whose outputs are the model's outputs (their output channels are
    the classes), found by following the traced forward back from the outputs; or what
    the model names itself in ``model.output_layer`` (a name or a list of names).

    Example:
        >>> from edgetrain.models import create
        >>> output_layers(create("resnet20"))
        ['fc']
    """
    named = getattr(model, "output_layer", None)
    if named:
        names = [named] if isinstance(named, str) else list(named)
        for name in names:
            model.get_submodule(name)  # an unknown name fails here, naming it
        return names
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        layers = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)]
        return layers[-1:]
    _, sources = _trace(model, shape)
    found: set[str] = set().union(*sources) if sources else set()
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(found, key=order.__getitem__)


class ZooModel(nn.Module):
    """Base of the zoo models: records the input shape and lists parameter layers."""

    input_shape: tuple[int, ...] = ()

    def parameter_layers(self) -> list[tuple[str, nn.Module]]:
        """Weight layers in forward order, output layer last."""
        return parameter_layers(self, self.input_shape)

    def feature_layers(self) -> list[str]:
        """Names of the weight layers in forward order, output layer last."""
        return [n for n, _ in self.parameter_layers()]


def init_weights(model: nn.Module) -> nn.Module:
    """He-normal convolutions (fan-out, ReLU), unit batch-norms, small-normal linears.

    The usual initialisation of torchvision's VGG/ResNet; without it, deep plain nets
    (no batch-norm) barely move in the first epochs.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def freeze(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on the parameters of the modules matching ``patterns``.

    Example:
        >>> from edgetrain.models import create
        >>> freeze(create("vgg_small"), ["conv1", "re:conv[23]"])
        ['conv1', 'conv2', 'conv3']
    """
    chosen = select_modules(model, patterns)
    for _, module in chosen:
        module.requires_grad_(False)
    return [n for n, _ in chosen]
