"""Apply a compression recipe's pruners to a model and report what they changed.

:func:`apply` checks the recipe against the model, runs its pruners in recipe order,
converts the model to the recipe's ``number_format`` when it has one (``psb``), and
returns a :class:`CompressReport`: filters kept per layer, parameters and inference MACs
(cost model) before and after pruning, what each pruner removed, what the number format
did, and, once the caller has evaluated the result, whether the network was *ruined*
(accuracy at chance level: such networks rarely recover in fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrain.compress.number_formats import NUMBER_FORMATS
from edgetrain.compress.pruning import PRUNERS, PrunedGroup
from edgetrain.compress.recipe import Recipe, load_recipe
from edgetrain.cost import analyze
from edgetrain.models import WEIGHT_LAYER_TYPES
from edgetrain.prune.graph import example_input as default_input

__all__ = ["CompressReport", "PrunerReport", "apply", "is_ruined"]

# Accuracy within this many points of chance counts as chance (a ruined network that
# predicts one class scores that class's share of the test set, near 100 / classes).
RUINED_TOLERANCE = 1.0


def is_ruined(accuracy: float, num_classes: int, tolerance: float = RUINED_TOLERANCE) -> bool:
    """Whether top-1 ``accuracy`` (percent) is at chance level: ``<= 100 / classes + tol``.

    Example:
        >>> is_ruined(10.4, 10), is_ruined(35.0, 10)
        (True, False)
    """
    return accuracy <= 100.0 / num_classes + tolerance


@dataclass
class PrunerReport:
    """One pruner of the recipe: its settings, the layers it resolved to, what it removed."""

    label: str
    method: str
    sparsity: float
    layers: list[str]
    groups: list[PrunedGroup] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "method": self.method,
            "sparsity": self.sparsity,
            "layers": list(self.layers),
            "groups": [g.to_dict() for g in self.groups],
        }


@dataclass
class CompressReport:
    """What compression changed.

    Attributes:
        filters_before / filters_after: output channels of every conv/linear layer.
        params_before / params_after: parameter counts.
        macs_before / macs_after: inference MACs per sample (cost model).
        pruners: one :class:`PrunerReport` per pruner, in recipe order.
        top1_before / top1_after: test top-1 (percent) before and after, once measured.
        num_classes: classes of the task (set by :meth:`mark_ruined`).
        ruined: accuracy after pruning is at chance level.
        number_format: what the recipe's number format did (``psb``: settings, folded
            batch-norms, converted layers, shifts and adds per input), or None.
    """

    filters_before: dict[str, int]
    filters_after: dict[str, int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    pruners: list[PrunerReport] = field(default_factory=list)
    top1_before: float | None = None
    top1_after: float | None = None
    num_classes: int | None = None
    ruined: bool = False
    number_format: dict[str, Any] | None = None

    @property
    def filters_kept(self) -> dict[str, tuple[int, int]]:
        """``{layer: (before, after)}`` for the layers that lost filters."""
        return {
            name: (n, self.filters_after.get(name, 0))
            for name, n in self.filters_before.items()
            if self.filters_after.get(name, 0) != n
        }

    @property
    def macs_ratio(self) -> float:
        """Inference MACs after / before."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        """Parameters after / before."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def mark_ruined(
        self, accuracy: float, num_classes: int, tolerance: float = RUINED_TOLERANCE
    ) -> bool:
        """Record the top-1 after pruning (percent) and flag the network ruined when it is
        at chance level (:func:`is_ruined`); returns the flag."""
        self.top1_after, self.num_classes = float(accuracy), int(num_classes)
        self.ruined = is_ruined(accuracy, num_classes, tolerance)
        return self.ruined

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON files, metrics and reports."""
        return {
            "filters_before": dict(self.filters_before),
            "filters_after": dict(self.filters_after),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_ratio": self.macs_ratio,
            "params_ratio": self.params_ratio,
            "pruners": [p.to_dict() for p in self.pruners],
            "top1_before": self.top1_before,
            "top1_after": self.top1_after,
            "num_classes": self.num_classes,
            "ruined": self.ruined,
            "number_format": self.number_format,
        }

    def summary(self) -> str:
        """A few lines of text: filters per pruned layer, params, MACs, accuracy."""
        lines = []
        for name, (before, after) in self.filters_kept.items():
            lines.append(f"  {name}: {before} -> {after} filters")
        lines.append(
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({100 * (1 - self.params_ratio):.1f}% fewer), inference MACs "
            f"{self.macs_before:,} -> {self.macs_after:,} "
            f"({100 * (1 - self.macs_ratio):.1f}% fewer)"
        )
        if self.number_format is not None:
            lines.append(str(self.number_format.get("summary", self.number_format["method"])))
        if self.top1_after is not None:
            before = "-" if self.top1_before is None else f"{self.top1_before:.2f}"
            flag = " RUINED (chance level)" if self.ruined else ""
            lines.append(f"top-1 {before} -> {self.top1_after:.2f}{flag}")
        return "\n".join(lines)


def _filters(model: nn.Module) -> dict[str, int]:
    return {
        n: int(m.weight.shape[0])
        for n, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYER_TYPES)
    }


def _measure(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    return params, int(analyze(model, input_shape, memory="layerwise").total().forward_macs)


def apply(
    model: nn.Module,
    recipe: Recipe | str | Path | dict[str, Any],
    example_input: torch.Tensor | None = None,
) -> tuple[nn.Module, CompressReport]:
    """Prune ``model`` as ``recipe`` says, in place, pruner after pruner, then convert it
    to the recipe's ``number_format`` when it has one (``psb``).

    The recipe is checked against the model first (layer names, tied layers), so a bad
    recipe leaves the model untouched. Deep-copy the model first to keep the original.
    Parameters and MACs "after" are those of the pruned model, before the number format.

    Args:
        model: the trained model (thinned in place).
        recipe: a :class:`Recipe`, a YAML path, a shipped recipe name, YAML text or a dict.
        example_input: one batch of inputs (default: zeros of ``model.input_shape``).

    Returns:
        ``(model, report)``; the report's accuracy fields are set by the caller
        (:meth:`CompressReport.mark_ruined`).

    Example:
        >>> from edgetrain.models import create
        >>> net, report = apply(create("resnet20"), "resnet20-l1")  # doctest: +SKIP
        >>> report.macs_ratio < 1  # doctest: +SKIP
        True
    """
    recipe = load_recipe(recipe)
    example = default_input(model, example_input)
    input_shape = tuple(example.shape[1:])
    resolved = recipe.check(model, example)
    number_format = recipe.number_format
    if number_format is not None:
        entry = NUMBER_FORMATS.entry(number_format.method)
        entry.meta["check_model"](model, number_format.options)
    filters_before = _filters(model)
    params_before, macs_before = _measure(model, input_shape)
    reports = []
    for label, spec in recipe.pruners.items():
        method = PRUNERS.entry(spec.method).fn
        groups = method(
            model, resolved[label], spec.sparsity, example_input=example, **spec.options
        )
        reports.append(PrunerReport(label, spec.method, spec.sparsity, resolved[label], groups))
    params_after, macs_after = _measure(model, input_shape)
    report = CompressReport(
        filters_before=filters_before,
        filters_after=_filters(model),
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        pruners=reports,
    )
    if number_format is not None:
        done = entry.fn(model, example_input=example, **number_format.options)
        report.number_format = done.to_dict()
    return model, report
