"""Pruning sensitivity: accuracy (and latency) of the model with one layer (or group)
pruned alone, and a recipe grouped from it.

For each target and each sparsity (0.1 ... 0.9 by default) a copy of the trained model
loses that fraction of the target's filters and is evaluated *without* fine-tuning (Li
et al., 2017, fig. 2). Layers whose accuracy holds up can be pruned hard; the curves
help to group layers into a recipe's pruners. With a :class:`LatencyProbe` every point
is also exported and timed on a runtime, each curve's files round-robin with the unpruned
model, so that drift in the machine's speed cancels: on real kernels removing filters does not
always make a layer faster (channel blocking, vector widths), so the latency curve says
where pruning pays. :func:`recipe_from_sensitivity` turns the curves into a recipe:
each target at the sparsity that keeps its accuracy within ``max_drop`` points and
(with latency) is fastest, targets of equal sparsity grouped into one pruner.

A target is a layer pattern or a list of patterns pruned together. Layers whose outputs
are tied (every conv feeding one residual add) cannot lose filters alone, so a target
always takes in its tied layers as well.
"""

from __future__ import annotations

import copy
import csv
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

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
    "LatencyProbe",
    "SensitivityRow",
    "SensitivityTarget",
    "recipe_from_sensitivity",
    "sensitivity",
    "sensitivity_targets",
    "write_recipe",
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
    latency_ms: float | None = None


@dataclass(frozen=True)
class LatencyProbe:
    """How sensitivity points are timed: exported in the runtime's format and measured
    with :func:`~edgetrain.compress.benchmark.benchmark` (median latency at batch 1).
    Several files are timed round-robin, ``repeats`` rounds of ``runs`` runs each, so
    that every file of a curve sees the same machine conditions."""

    runtime: str = "onnxruntime"
    threads: int = 1
    runs: int = 50
    repeats: int = 3
    warmup: int = 10
    options: Mapping[str, Any] = field(default_factory=dict)

    def _runtime(self) -> Any:
        from edgetrain.compress.runtime import RUNTIMES

        rt = RUNTIMES.create(self.runtime, **dict(self.options))
        missing = rt.missing()
        if missing:
            raise EdgetrainError(missing)
        return rt

    def export(self, model: nn.Module, stem: Path) -> Path:
        """``model`` written in the runtime's format next to ``stem`` (its suffix added)."""
        from edgetrain.compress.formats import EXPORT_FORMATS, export_model

        fmt = self._runtime().export_format
        path = stem.with_name(stem.name + EXPORT_FORMATS.entry(fmt).meta["suffix"])
        export_model(model, path, fmt, threads=self.threads)
        return path

    def time(self, paths: Sequence[Path]) -> list[float]:
        """The median latency (ms) of each file, over ``repeats`` round-robin rounds."""
        from edgetrain.compress.benchmark import benchmark

        rt = self._runtime()
        samples: list[list[float]] = [[] for _ in paths]
        for _ in range(self.repeats):
            for path, times in zip(paths, samples, strict=True):
                result = benchmark(
                    path,
                    runtime=rt,
                    threads=self.threads,
                    warmup=self.warmup,
                    runs=self.runs,
                    repeats=1,
                    throughput_batch=None,
                    profile=False,
                )
                times.append(result.latency_ms)
        return [statistics.median(times) for times in samples]

    def measure(self, model: nn.Module, folder: Path) -> float:
        """The median latency (ms) of ``model`` on the runtime."""
        return self.time([self.export(model, folder / "model")])[0]


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
    latency: LatencyProbe | None = None,
    progress: Any = None,
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
        latency: also time every point on a runtime (``latency_ms``); None: accuracy only.
        progress: called with (points done, points in all) after each point.

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
    if latency is not None:
        latency._runtime()  # a runtime that is missing: one line, before any work
    base = evaluate_model(copy.deepcopy(model), data, batch_size, device)
    base_macs = int(analyze(model, shape, memory="layerwise").total().forward_macs)
    rows: list[SensitivityRow] = []
    total, done = len(resolved) * len(sparsities), 0
    with tempfile.TemporaryDirectory(prefix="edgetrain-sensitivity-") as tmp:
        folder = Path(tmp)
        unpruned = None if latency is None else latency.export(model, folder / "unpruned")
        for t, target in enumerate(resolved):
            before = target.filters(model)
            curve = [
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
            ]
            files: list[Path] = [] if unpruned is None else [unpruned]
            for k, sparsity in enumerate(sparsities):
                pruned = copy.deepcopy(model)
                prune(pruned, list(target.layers), float(sparsity), example_input=example)
                after, macs = (
                    target.filters(pruned),
                    int(analyze(pruned, shape, memory="layerwise").total().forward_macs),
                )
                metrics = evaluate_model(pruned, data, batch_size, device)
                curve.append(
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
                if latency is not None:
                    files.append(latency.export(pruned, folder / f"t{t}-s{k}"))
                done += 1
                if progress is not None:
                    progress(done, total)
            if latency is not None:
                # the curve's files round-robin, its own unpruned model among them: the
                # machine's speed drifts over minutes by more than one layer saves
                timed = latency.time(files)
                curve = [replace(r, latency_ms=ms) for r, ms in zip(curve, timed, strict=True)]
                for f in files[1:]:
                    f.unlink()
            rows += curve
    return rows


def recipe_from_sensitivity(
    rows: Sequence[SensitivityRow],
    max_drop: float = 1.0,
    metric: str = "latency",
    min_gain: float = 0.02,
    method: str = "l1_filter",
    finetune: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A compression recipe from sensitivity curves (Li et al.'s manual method, automated).

    Each target gets the sparsity, among those whose top-1 (pruned alone, no fine-tuning)
    is within ``max_drop`` points of the unpruned model, with the lowest latency
    (``metric="latency"``; a point must be at least ``min_gain`` (a fraction) faster
    than the unpruned model, else the target is left alone: pruning it does not pay on
    this runtime) or the fewest MACs (``metric="macs"``). Targets of equal sparsity are
    grouped into one pruner, named by its sparsity (``s60`` = 60 % of filters removed).
    The drops are measured one target at a time, so the recipe's fine-tuning recovers
    what pruning them together costs.

    Returns:
        The recipe as a dict (``version``, ``pruners``, ``finetune``, ``export``), and the
        chosen point per target under the key ``chosen`` (drop it before loading, or use
        :func:`~edgetrain.compress.recipe.load_recipe` on the written YAML, which
        :func:`write_recipe` keeps free of it).

    Raises:
        ConfigError: ``metric="latency"`` on rows without latencies, or an unknown metric.
    """
    if metric not in ("latency", "macs"):
        raise ConfigError(f"metric must be latency or macs, got '{metric}'")
    if metric == "latency" and any(r.latency_ms is None for r in rows):
        raise ConfigError(
            "the sensitivity rows have no latencies; measure them with a runtime "
            "(edgetrain compress sensitivity ... --metric latency) or group by macs"
        )
    curves: dict[str, list[SensitivityRow]] = {}
    for r in rows:
        curves.setdefault(r.target, []).append(r)
    groups: dict[float, list[str]] = {}
    chosen: dict[str, dict[str, Any]] = {}
    for label, points in curves.items():
        base = next(p for p in points if p.sparsity == 0.0)
        kept = [p for p in points if p.sparsity > 0 and p.top1 >= base.top1 - max_drop]
        if metric == "latency":
            assert base.latency_ms is not None
            limit = base.latency_ms * (1.0 - min_gain)
            fast = [p for p in kept if p.latency_ms is not None and p.latency_ms <= limit]
            best = min(fast, key=lambda p: (p.latency_ms, p.sparsity), default=None)
        else:
            best = min(kept, key=lambda p: (p.macs, -p.sparsity), default=None)
        if best is None:
            continue
        groups.setdefault(best.sparsity, []).extend(best.layers)
        chosen[label] = {
            "sparsity": best.sparsity,
            "top1": best.top1,
            "top1_drop": base.top1 - best.top1,
            "macs": best.macs,
            "macs_relative": best.macs / base.macs if base.macs else 1.0,
            **(
                {
                    "latency_ms": best.latency_ms,
                    "latency_relative": best.latency_ms / base.latency_ms,
                }
                if best.latency_ms is not None and base.latency_ms
                else {}
            ),
        }
    pruners = {
        f"s{round(100 * sparsity):02d}": {
            "method": method,
            "sparsity": sparsity,
            "layers": list(dict.fromkeys(layers)),
        }
        for sparsity, layers in sorted(groups.items(), reverse=True)
    }
    return {
        "version": 1,
        "pruners": pruners,
        "finetune": dict(finetune or {"epochs": 10, "lr": 0.01}),
        "export": {"format": "onnx", "opset": 17},
        "chosen": chosen,
    }


def write_recipe(recipe: Mapping[str, Any], path: str | Path, header: str = "") -> Path:
    """Write a recipe from :func:`recipe_from_sensitivity` as YAML (``chosen`` becomes
    comments), checked by loading it back."""
    import yaml

    from edgetrain.compress.recipe import load_recipe

    body = {k: v for k, v in recipe.items() if k != "chosen"}
    load_recipe(body)  # refuse a recipe the loader would refuse, before writing it
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for label, c in recipe.get("chosen", {}).items():
        speed = f", latency x{c['latency_relative']:.3f}" if "latency_relative" in c else ""
        lines.append(
            f"#   {label}: {100 * c['sparsity']:.0f} % of filters, top-1 -{c['top1_drop']:.2f} "
            f"points alone, MACs x{c['macs_relative']:.3f}{speed}"
        )
    with atomic_writer(path, "w") as f:
        f.write("\n".join(lines) + ("\n" if lines else "") + yaml.safe_dump(body, sort_keys=False))
    return Path(path)


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
