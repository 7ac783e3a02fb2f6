"""Do scheduled layers land where per-layer-LR layers land? Distances and angles between
runs, per layer, at each run's best epoch.

For runs a (row) and b (column) and a layer, at run a's best epoch e_a (b taken at the
same epoch, or its last one): the Euclidean distance ``||w_a(e_a) - w_b(e_a)||`` and the
angle ``arccos(cos(w_a(e_a) - w_0, w_b(e_a) - w_0))`` between the changes from the common
start ``w_0`` (run a's epoch-0 snapshot). Rows use their own best epoch, so the matrices
are not symmetric. Layers that no run changed are left out.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edgetrain.analysis.snapshots import load_snapshots
from edgetrain.engine import RunDirectory
from edgetrain.errors import EdgetrainError

__all__ = ["SimilarityResult", "best_epoch", "similarity"]


@dataclass(frozen=True)
class SimilarityResult:
    """Per-layer matrices (rows/columns in ``runs`` order)."""

    runs: list[str]
    best_epochs: list[int]
    layers: list[str]
    distance: dict[str, list[list[float]]]
    angle_deg: dict[str, list[list[float]]]

    def to_csv(self) -> str:
        """Long format: layer, row run, column run, distance, angle in degrees."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["layer", "run", "other", "distance", "angle_deg"])
        for layer in self.layers:
            for i, a in enumerate(self.runs):
                for j, b in enumerate(self.runs):
                    writer.writerow(
                        [
                            layer,
                            a,
                            b,
                            f"{self.distance[layer][i][j]:.6g}",
                            f"{self.angle_deg[layer][i][j]:.4g}",
                        ]
                    )
        return buf.getvalue()

    def most_similar(self, run: str, layer: str, by: str = "angle_deg") -> list[str]:
        """The other runs ordered from most to least similar to ``run`` for ``layer``."""
        i = self.runs.index(run)
        matrix = getattr(self, by)[layer]
        others = [j for j in range(len(self.runs)) if j != i]
        return [self.runs[j] for j in sorted(others, key=lambda j: matrix[i][j])]


def best_epoch(run_dir: str | Path, metric: str = "val_top1") -> int:
    """The epoch with the best ``metric`` (first on ties)."""
    records = [r for r in RunDirectory(run_dir).read_metrics() if metric in r]
    if not records:
        raise EdgetrainError(f"'{run_dir}' has no '{metric}' in metrics.jsonl")
    return int(max(records, key=lambda r: r[metric])["epoch"])


def _angle(u: torch.Tensor, v: torch.Tensor) -> float:
    nu, nv = float(u.norm()), float(v.norm())
    if nu == 0.0 or nv == 0.0:
        return 0.0 if nu == nv else 90.0
    # 2*atan2(|a-b|, |a+b|) of the unit vectors: arccos without its rounding near 0 and 180
    a, b = u.double() / nu, v.double() / nv
    return math.degrees(2.0 * math.atan2(float((a - b).norm()), float((a + b).norm())))


def similarity(
    run_dirs: Sequence[str | Path], names: Sequence[str] | None = None
) -> SimilarityResult:
    """Distance and angle matrices between runs, per layer (see the module docstring)."""
    paths = [Path(p) for p in run_dirs]
    labels = list(names) if names else [p.name for p in paths]
    snaps = [load_snapshots(p) for p in paths]
    bests = [best_epoch(p) for p in paths]
    shared = [n for n in snaps[0][0] if all(n in s[0] for s in snaps)]
    if not shared:
        raise EdgetrainError("the runs share no layer; compare runs of the same model")
    # layers no run changed (frozen everywhere) carry no information
    layers = [
        n
        for n in shared
        if any(not torch.equal(s[e][n], s[0][n]) for s, e in zip(snaps, bests, strict=True))
    ]
    distance: dict[str, list[list[float]]] = {}
    angle: dict[str, list[list[float]]] = {}
    for layer in layers:
        dist_rows, angle_rows = [], []
        for a, e in zip(snaps, bests, strict=True):
            start = a[0][layer]
            wa = a[e][layer]
            d_row, a_row = [], []
            for b in snaps:
                wb = b[min(e, max(b))][layer]
                if wb.shape != wa.shape:
                    raise EdgetrainError(f"layer '{layer}' differs in shape between runs")
                d_row.append(float((wa - wb).norm()))
                a_row.append(_angle(wa - start, wb - start))
            dist_rows.append(d_row)
            angle_rows.append(a_row)
        distance[layer], angle[layer] = dist_rows, angle_rows
    return SimilarityResult(labels, bests, layers, distance, angle)
