"""Shift-and-add accounting: what a conv or linear layer costs when its weights are
signed powers of two, so that every product is a shift.

A layer with ``n`` weight samples per forward (progressive stochastic binarization: each
weight the mean of ``n`` signed powers of two) accumulates, per input sample:

- ``products``: activation x nonzero-weight products (MACs without the zero weights);
- ``shifts = n * products`` (one shift per product by a one-sample weight), plus one per
  output for the ``1/n`` scaling when ``n > 1`` (a shift when ``n`` is a power of two,
  counted as one operation otherwise);
- ``adds = n * products`` (accumulating each product, sign included).

The products come from the traced forward (the conv/linear op of each layer and its
output shape), so any layer arrangement is counted the way :func:`~edgetrain.cost.analyze`
sees it.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))
    >>> rows = shift_add_costs(net, (1, 4, 4), {"0": (4, 18), "2": (4, 96)})
    >>> [(r.name, r.products, r.shifts, r.adds) for r in rows]
    [('0', 288, 1184, 1152), ('2', 96, 387, 384)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from edgetrain.cost.tracer import trace
from edgetrain.errors import ConfigError

__all__ = ["ShiftAddCost", "shift_add_costs", "shift_add_ops"]

# Where the output channels are in a layer kind's output: conv (N, C, ...), linear (..., F).
_CHANNEL_DIM = {"conv": 1, "linear": -1}


@dataclass(frozen=True)
class ShiftAddCost:
    """One layer's shift-add work per input sample at ``samples`` weight samples."""

    name: str
    kind: str
    samples: int
    products: int
    outputs: int
    shifts: int
    adds: int


def shift_add_ops(products: int, outputs: int, samples: int) -> tuple[int, int]:
    """``(shifts, adds)`` of ``products`` power-of-two products and ``outputs`` outputs at
    ``samples`` weight samples."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1 for shift-add counting, got {samples}")
    shifts = samples * products + (outputs if samples > 1 else 0)
    return shifts, samples * products


def shift_add_costs(
    model: nn.Module,
    input_shape: Sequence[int],
    layers: Mapping[str, tuple[int, int]],
) -> list[ShiftAddCost]:
    """The shift-add cost of each named layer, in execution order, per input sample.

    Args:
        model: the model (traced on the meta device, not run).
        input_shape: one sample's shape.
        layers: layer name -> ``(samples, nonzero weights)``; other layers are not
            counted (pools, activations, float layers).

    Raises:
        ConfigError: a named layer that runs no convolution or linear op.
    """
    found: list[ShiftAddCost] = []
    for record in trace(model, input_shape, batch_size=1).records:
        counts = record.counts
        if record.module not in layers or counts is None or counts.kind not in _CHANNEL_DIM:
            continue
        samples, nonzero = layers[record.module]
        channels = record.out_shape[_CHANNEL_DIM[counts.kind]]
        rows = record.out_elems // channels  # outputs each weight row is applied to
        products = rows * nonzero
        shifts, adds = shift_add_ops(products, record.out_elems, samples)
        found.append(
            ShiftAddCost(
                record.module,
                record.module_type,
                samples,
                products,
                record.out_elems,
                shifts,
                adds,
            )
        )
    missing = sorted(set(layers) - {c.name for c in found})
    if missing:
        raise ConfigError(
            f"layer '{missing[0]}' runs no convolution or linear op in the forward; "
            "count only conv and linear layers"
        )
    return found
