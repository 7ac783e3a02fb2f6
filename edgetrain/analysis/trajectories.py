"""Training paths in 2-D: UMAP fitted on the baseline runs, the other runs projected.

One point per (layer, run, epoch) from the weight snapshots. Per layer, UMAP is fitted on
every epoch of the baseline runs (conventional and per-layer-LR fine-tuning, say) and
the other runs are placed with ``transform``, so all paths share the baselines' map; the
epoch of best accuracy is marked. Needs the ``[analysis]`` extra (umap-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetrain._optional import require
from edgetrain.analysis.similarity import best_epoch
from edgetrain.analysis.snapshots import load_snapshots
from edgetrain.errors import EdgetrainError

__all__ = ["TrajectoryPoint", "trajectories"]


@dataclass(frozen=True)
class TrajectoryPoint:
    """One run at one epoch, for one layer, in the 2-D map."""

    layer: str
    run: str
    epoch: int
    x: float
    y: float
    best: bool
    baseline: bool


def trajectories(
    run_dirs: Sequence[str | Path],
    baselines: Sequence[str],
    layers: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> list[TrajectoryPoint]:
    """2-D paths of every run, per layer (see the module docstring).

    Args:
        run_dirs: runs trained with the ``weight-snapshots`` callback.
        baselines: names of the runs the map is fitted on (at least one).
        layers: layers to map (default: every layer some run changed).
        names: run names (default: folder names).
        seed: UMAP's random state.
    """
    umap = require("umap", extra="analysis", package="umap-learn")
    paths = [Path(p) for p in run_dirs]
    labels = list(names) if names else [p.name for p in paths]
    unknown = [b for b in baselines if b not in labels]
    if not baselines or unknown:
        raise EdgetrainError(
            f"baselines {unknown or '(none)'} are not among the runs: {', '.join(labels)}"
        )
    snaps = [load_snapshots(p) for p in paths]
    bests = [best_epoch(p) for p in paths]
    chosen = (
        list(layers)
        if layers
        else [
            n
            for n in snaps[0][0]
            if any(not np.array_equal(s[max(s)][n].numpy(), s[0][n].numpy()) for s in snaps)
        ]
    )
    points: list[TrajectoryPoint] = []
    for layer in chosen:
        base = [i for i, name in enumerate(labels) if name in baselines]
        fit_rows = np.stack([snaps[i][e][layer].numpy() for i in base for e in sorted(snaps[i])])
        reducer = umap.UMAP(
            n_neighbors=max(2, min(15, len(fit_rows) - 1)),
            random_state=seed,
            init="random",
            n_jobs=1,
        )
        reducer.fit(fit_rows)
        for i, (name, s) in enumerate(zip(labels, snaps, strict=True)):
            epochs = sorted(s)
            coords = reducer.transform(np.stack([s[e][layer].numpy() for e in epochs]))
            points += [
                TrajectoryPoint(
                    layer, name, e, float(c[0]), float(c[1]), e == bests[i], name in baselines
                )
                for e, c in zip(epochs, coords, strict=True)
            ]
    return points
