"""Pruning sensitivity: accuracy of the model with one layer (or group) pruned alone.

For each target and each sparsity (0.1 ... 0.9 by default) a copy of the trained model
loses that fraction of the target's filters and is evaluated *without* fine-tuning (Li
et al., 2017, fig. 2). Layers whose accuracy holds up can be pruned hard; the curves
help to group layers into a recipe's pruners.

A target is a layer pattern or a list of patterns pruned together. Layers whose outputs
are tied (every conv feeding one residual add) cannot lose filters alone, so a target
always takes in its tied layers as well.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgetrain._atomic import atomic_writer
from edgetrain._modules import select_modules
from edgetrain.compress.pruning import PRUNERS, output_layer, tied_layers
from edgetrain.compress.source import evaluate_model
from edgetrain.cost import analyze
from edgetrain.data import ArrayDataset
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.models import WEIGHT_LAYER_TYPES
from edgetrain.prune.graph import example_input as default_input

__all__ = [
    "DEFAULT_SPARSITIES",
    "SensitivityRow",
    "SensitivityTarget",
    "sensitivity",
    "sensitivity_targets",
    "write_sensitivity_csv",
]

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SensitivityTarget:
    """Layers pruned together in one sensitivity curve, under a short label; ``heads``
    holds one layer per channel group (tied layers share their filter count)."""

    label: str
    layers: tuple[str, ...]
    heads: tuple[str, ...]

    def filters(self, model: nn.Module) -> int:
        """The target's filter count in ``model``."""
        return sum(int(model.get_submodule(n).weight.shape[0]) for n in self.heads)


@dataclass(frozen=True)
class SensitivityRow:
    """One point of a sensitivity curve (sparsity 0 is the unpruned model)."""

    target: str
    layers: tuple[str, ...]
    sparsity: float
    filters_before: int
    filters_after: int
    top1: float
    loss: float
    macs: int


def _prunable(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> list[str]:
    outputs = output_layer(model, example)
    return [
        n
        for n in names
        if isinstance(model.get_submodule(n), WEIGHT_LAYER_TYPES) and n not in outputs
    ]


def sensitivity_targets(
    model: nn.Module,
    targets: Sequence[str | Sequence[str]] | None = None,
    example_input: torch.Tensor | None = None,
) -> list[SensitivityTarget]:
    """Resolve targets: each layer a pattern matches is a target of its own (with its tied
    layers); a list of patterns is one target. None: every prunable layer.

    Raises:
        ConfigError: a pattern matching no prunable conv/linear layer.
    """
    example = default_input(model, example_input)
    tied = tied_layers(model, example)

    def match(patterns: Sequence[str]) -> list[str]:
        try:
            names = [n for n, _ in select_modules(model, list(patterns))]
        except EdgetrainError as exc:
            raise ConfigError(str(exc)) from None
        names = [n for n in _prunable(model, names, example) if n in tied]
        if not names:
            raise ConfigError(
                f"layer pattern {', '.join(patterns)} matches no conv/linear layer whose "
                "filters can be removed (the output layer cannot)"
            )
        return names

    def expand(names: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(p for n in names for p in tied[n].producers))

    def make(layers: list[str], label: str) -> SensitivityTarget:
        heads = tuple(dict.fromkeys(tied[n].producers[0] for n in layers))
        return SensitivityTarget(label, tuple(layers), heads)

    resolved: dict[tuple[str, ...], SensitivityTarget] = {}
    if targets is None:
        targets = [n for n, _ in model.named_modules() if n in tied]
    for target in targets:
        if isinstance(target, str):
            for name in match([target]):
                layers = expand([name])
                label = name if len(layers) == 1 else f"{name} (+{len(layers) - 1} tied)"
                resolved.setdefault(tuple(layers), make(layers, label))
        else:
            layers = expand(match(list(target)))
            resolved.setdefault(tuple(layers), make(layers, "+".join(target)))
    return list(resolved.values())


def sensitivity(
    model: nn.Module,
    data: ArrayDataset,
    targets: Sequence[str | Sequence[str]] | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    method: str = "l1_filter",
    batch_size: int = 256,
    device: str = "cpu",
    example_input: torch.Tensor | None = None,
) -> list[SensitivityRow]:
    """Accuracy of ``model`` on ``data`` with each target pruned alone, per sparsity.

    Args:
        model: the trained model (not changed; each point prunes a copy).
        data: evaluation data (the run's test split).
        targets: layer patterns (each matched layer alone) or lists of patterns (pruned
            together); None: every prunable layer.
        sparsities: fractions of filters removed, each in [0, 1).
        method: a pruning method of :data:`~edgetrain.compress.pruning.PRUNERS`.
        batch_size: evaluation batch size.
        device: where to evaluate.
        example_input: one batch of inputs (default: zeros of ``model.input_shape``).

    Returns:
        Rows per target: sparsity 0 (the unpruned model), then each sparsity.

    Example:
        >>> rows = sensitivity(run.model, run.test_data(), ["layer1.*.conv1"])  # doctest: +SKIP
    """
    bad = [s for s in sparsities if not 0.0 <= s < 1.0]
    if bad:
        raise ConfigError(f"sparsities must be in [0, 1), got {bad[0]}")
    prune = PRUNERS.entry(method).fn
    model = copy.deepcopy(model).cpu().eval()  # pruned on the CPU, evaluated on `device`
    example = default_input(model, None if example_input is None else example_input.cpu())
    shape = tuple(example.shape[1:])
    resolved = sensitivity_targets(model, targets, example)
    base = evaluate_model(copy.deepcopy(model), data, batch_size, device)
    base_macs = int(analyze(model, shape, memory="layerwise").total().forward_macs)
    rows: list[SensitivityRow] = []
    for target in resolved:
        before = target.filters(model)
        rows.append(
            SensitivityRow(
                target.label,
                target.layers,
                0.0,
                before,
                before,
                base["top1"],
                base["loss"],
                base_macs,
            )
        )
        for sparsity in sparsities:
            pruned = copy.deepcopy(model)
            prune(pruned, list(target.layers), float(sparsity), example_input=example)
            after, macs = (
                target.filters(pruned),
                int(analyze(pruned, shape, memory="layerwise").total().forward_macs),
            )
            metrics = evaluate_model(pruned, data, batch_size, device)
            rows.append(
                SensitivityRow(
                    target.label,
                    target.layers,
                    float(sparsity),
                    before,
                    after,
                    metrics["top1"],
                    metrics["loss"],
                    macs,
                )
            )
    return rows


def write_sensitivity_csv(rows: Sequence[SensitivityRow], path: str | Path) -> Path:
    """Write the rows as CSV (layers joined by spaces), atomically."""
    fields = list(SensitivityRow.__dataclass_fields__)
    with atomic_writer(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            d = asdict(row)
            d["layers"] = " ".join(row.layers)
            writer.writerow(d)
    return Path(path)
