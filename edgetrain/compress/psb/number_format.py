"""The recipe's number format ``psb`` (``number_format: {method: psb, samples: 8}``),
applied by :func:`~edgetrain.compress.apply` after pruning."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from edgetrain.compress.number_formats import NUMBER_FORMATS
from edgetrain.compress.psb.cost import OperationCost, operation_cost
from edgetrain.compress.psb.format import PSBConfig
from edgetrain.compress.psb.layers import _convert, _targets

__all__ = ["PSBReport", "psb"]


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
