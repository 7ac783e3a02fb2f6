"""Transfer-learning depth sweep: one fine-tuning run per "train the last N layers" case.

For each case N the layers below the last N weight layers are frozen, the run is trained
through the engine, and the case is reported with its test accuracy and loss, the
forward MACs of the trainable part (from the lowest trained layer up) and the energy of
that part per sample at the profile's ``e_mac`` (3.2 pJ by default). With ``seeds`` > 1
each case trains that many seeds (``-depth<N>``, then ``-depth<N>-s1`` ...) and reports
the mean best accuracy with its standard deviation.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgetrain import models
from edgetrain.cost import analyze, load_profile
from edgetrain.errors import ConfigError
from edgetrain.runs.build import build_run_model
from edgetrain.runs.config import RunConfig, load_config
from edgetrain.runs.train import start_run

__all__ = ["DepthCase", "sweep_depth", "trainable_forward_macs"]


@dataclass(frozen=True)
class DepthCase:
    """One case of the sweep."""

    depth: int
    trained_layers: tuple[str, ...]
    conv_layers: int
    accuracy: float
    loss: float
    trainable_macs: int
    energy_nj: float
    run_dir: str
    seeds: int = 1
    accuracy_std: float = 0.0
    accuracies: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trained_layers"] = ",".join(self.trained_layers)
        d["accuracies"] = ",".join(str(a) for a in self.accuracies)
        return d


def trainable_forward_macs(model: Any, input_shape: Sequence[int], depth: int) -> int:
    """Forward MACs of the ops from the lowest of the last ``depth`` layers to the output."""
    rows = analyze(model, input_shape, plans=[f"last:{depth}"], memory="layerwise").by_layer(0)
    first = next(i for i, r in enumerate(rows) if r.trained)
    return sum(r.forward for r in rows[first:])


def sweep_depth(
    config: RunConfig,
    depths: Sequence[int] | None = None,
    runs_root: str | Path = "runs",
    profile: str = "reference",
    overwrite: bool = False,
    progress: bool = True,
    seeds: int = 1,
) -> list[DepthCase]:
    """Fine-tune ``config`` once per depth N and seed (default: every N from 1 to all
    layers, one seed).

    Each run is ``<runs_root>/<config.name>-depth<N>`` (``-s<k>`` added for seed
    ``config.seed + k``, k > 0); the recipe's own ``model.freeze`` is replaced by the
    case's freezing. A case's accuracy and loss are the means over its seeds of each
    run's best epoch.
    """
    tree = config.to_dict()
    model, shape = build_run_model(config)
    layers = [n for n, _ in models.parameter_layers(model)]
    cases = list(depths or range(1, len(layers) + 1))
    bad = [n for n in cases if not 1 <= n <= len(layers)]
    if bad:
        raise ConfigError(f"depths {bad} out of range: the model has {len(layers)} layers")
    if seeds < 1:
        raise ConfigError(f"seeds={seeds} must be at least 1")
    e_mac = load_profile(profile).e_mac_pj
    results = []
    for n in cases:
        trained = tuple(layers[-n:])
        bests, run_dirs = [], []
        for k in range(seeds):
            name = f"{config.name}-depth{n}" + (f"-s{k}" if k else "")
            case_tree = {**tree, "name": name, "seed": config.seed + k}
            case_tree["model"] = {**tree["model"], "freeze": list(layers[:-n])}
            case = load_config(case_tree)
            result = start_run(case, runs_root, overwrite=overwrite, progress=progress)
            bests.append(
                max(
                    (r for r in _history(result.run_dir.read_metrics()) if "val_top1" in r),
                    key=lambda r: r["val_top1"],
                )
            )
            run_dirs.append(str(result.run_dir.path))
        accuracies = tuple(float(b["val_top1"]) for b in bests)
        macs = trainable_forward_macs(model, shape, n)
        results.append(
            DepthCase(
                depth=n,
                trained_layers=trained,
                conv_layers=sum(1 for t in trained if _is_conv(model, t)),
                accuracy=statistics.fmean(accuracies),
                loss=statistics.fmean(float(b["val_loss"]) for b in bests),
                trainable_macs=macs,
                energy_nj=macs * e_mac / 1000.0,
                run_dir=run_dirs[0],
                seeds=seeds,
                accuracy_std=statistics.stdev(accuracies) if seeds > 1 else 0.0,
                accuracies=accuracies,
            )
        )
    return results


def _history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "epoch" in r]


def _is_conv(model: Any, name: str) -> bool:
    return type(dict(model.named_modules())[name]).__name__.startswith("Conv")
