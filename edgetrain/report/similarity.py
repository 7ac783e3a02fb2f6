"""Similarity pictures: per-layer distance/angle heat maps and UMAP training paths."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain.analysis import SimilarityResult  # noqa: E402

__all__ = ["plot_similarity", "plot_trajectories"]


def plot_similarity(result: SimilarityResult, out_dir: str | Path) -> list[Path]:
    """``similarity_angle.png`` and ``similarity_distance.png`` (rows: run at its best
    epoch; columns: the run compared); returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    n = len(result.layers)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    size = max(2.6, 0.5 * len(result.runs) + 1.2)
    for attr, title, cmap in (
        ("angle_deg", "angle of the changes (deg)", "viridis_r"),
        ("distance", "Euclidean distance", "magma_r"),
    ):
        fig, axes = plt.subplots(
            rows, cols, figsize=(cols * size, rows * size), dpi=100, squeeze=False
        )
        for ax, layer in zip(axes.flat, result.layers, strict=False):
            image = ax.imshow(getattr(result, attr)[layer], cmap=cmap)
            ax.set_title(layer, fontsize="small")
            ax.set_xticks(range(len(result.runs)), result.runs, rotation=90, fontsize="x-small")
            ax.set_yticks(range(len(result.runs)), result.runs, fontsize="x-small")
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"{title}: row run at its best epoch vs column run")
        fig.tight_layout()
        path = out / f"similarity_{'angle' if attr == 'angle_deg' else 'distance'}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_trajectories(points: list, out_dir: str | Path) -> Path:
    """``trajectories.png``: one panel per layer, one path per run (baselines solid,
    others dashed), the best epoch starred."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = list(dict.fromkeys(p.layer for p in points))
    runs = list(dict.fromkeys(p.run for p in points))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cols = min(3, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 3.6), dpi=100, squeeze=False)
    for ax, layer in zip(axes.flat, layers, strict=False):
        for k, run in enumerate(runs):
            path = sorted(
                (p for p in points if p.layer == layer and p.run == run), key=lambda p: p.epoch
            )
            if not path:
                continue
            style = "-" if path[0].baseline else "--"
            color = colors[k % len(colors)]
            ax.plot(
                [p.x for p in path], [p.y for p in path], style, marker=".", color=color, label=run
            )
            for p in path:
                if p.best:
                    ax.plot(p.x, p.y, "*", markersize=14, color=color, markeredgecolor="black")
        ax.set_title(layer, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="x-small")
    fig.suptitle("training paths (UMAP fitted on the baselines; star: best epoch)")
    fig.tight_layout()
    path = out / "trajectories.png"
    fig.savefig(path)
    plt.close(fig)
    return path
