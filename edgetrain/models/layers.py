"""Parameter layers in forward order.

Freezing, layer schedules and the cost model all speak of "the last N layers", so every
model needs one ordered list of its weight layers (convolutions and linears; their
batch-norms travel with them). The order is the order in which a forward pass *calls*
them, found by tracing one forward on the meta device (no real memory is used), and
falls back to registration order when no input shape is known.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgetrain._modules import select_modules

__all__ = [
    "WEIGHT_LAYER_TYPES",
    "ZooModel",
    "freeze",
    "init_weights",
    "parameter_layers",
    "select_modules",
]

WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
)


def parameter_layers(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> list[tuple[str, nn.Module]]:
    """The model's weight layers ``(name, module)`` in the order a forward pass calls them.

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
    order: dict[str, int] = {}

    def record(name: str) -> None:
        order.setdefault(name, len(order))

    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: record(n)) for n, m in layers]
    meta_state = {
        k: torch.empty_like(v, device="meta")
        for k, v in [*model.named_parameters(), *model.named_buffers()]
    }
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            torch.func.functional_call(model, meta_state, (torch.empty(1, *shape, device="meta"),))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    # Layers the forward never called (dead branches) keep registration order at the end.
    return sorted(layers, key=lambda nm: order.get(nm[0], len(order)))


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
