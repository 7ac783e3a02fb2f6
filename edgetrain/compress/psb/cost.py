"""The shifts and adds of one forward of a PSB model, per input sample.

Counted by the cost model's shift-add accounting (:mod:`edgetrain.cost.shift_add`) from
the traced forward, with each PSB layer's weight samples and its nonzero (unpruned)
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from edgetrain.compress.psb.layers import psb_layers
from edgetrain.cost import ShiftAddCost, shift_add_costs
from edgetrain.errors import ConfigError

__all__ = ["OperationCost", "operation_cost"]


@dataclass
class OperationCost:
    """Shifts and adds of one forward of a PSB model, per input sample, by layer."""

    layers: list[ShiftAddCost] = field(default_factory=list)

    @property
    def shifts(self) -> int:
        return sum(layer.shifts for layer in self.layers)

    @property
    def adds(self) -> int:
        return sum(layer.adds for layer in self.layers)

    @property
    def products(self) -> int:
        return sum(layer.products for layer in self.layers)

    def by_layer(self) -> dict[str, ShiftAddCost]:
        return {layer.name: layer for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "shifts": self.shifts,
            "adds": self.adds,
            "products": self.products,
            "layers": [asdict(layer) for layer in self.layers],
        }


def operation_cost(
    model: nn.Module, input_shape: Sequence[int] | None = None, samples: int | None = None
) -> OperationCost:
    """Count the shifts and adds of one forward of a PSB model, per input sample.

    Layers that are not PSB (pools, activations, remaining float layers) are not counted.

    Args:
        model: a model converted with :func:`~edgetrain.compress.psb.to_psb`.
        input_shape: one sample's shape (default ``model.input_shape``).
        samples: count at this many weight samples (default: each layer's own).

    Raises:
        ConfigError: no PSB layer, no input shape, or 0 samples (expected weights are
            not powers of two: their products are multiplications).

    Example:
        >>> from edgetrain.compress.psb import to_psb
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
    counted: dict[str, tuple[int, int]] = {}
    for name, layer in layers:
        n = layer.psb.samples if samples is None else samples
        if n < 1:
            raise ConfigError(
                f"operation cost of '{name}' at {n} samples: expected weights are not powers "
                "of two; count at samples >= 1"
            )
        with torch.no_grad():
            counted[name] = (n, int(torch.count_nonzero(layer.weight * layer.prune_mask)))
    return OperationCost(shift_add_costs(model, tuple(shape), counted))
