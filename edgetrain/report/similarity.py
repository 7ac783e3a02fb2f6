"""Heat maps of run-to-run similarity: one panel per layer, angle and distance."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain.analysis import SimilarityResult  # noqa: E402

__all__ = ["plot_similarity"]


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
