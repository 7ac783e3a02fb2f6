"""Pruning-sensitivity plot: test top-1 vs fraction of filters removed, one line per target."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain.compress.sensitivity import SensitivityRow  # noqa: E402

__all__ = ["plot_sensitivity"]


def plot_sensitivity(rows: Sequence[SensitivityRow], path: str | Path) -> Path:
    """Draw the curves of :func:`~edgetrain.compress.sensitivity` rows into a PNG."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[SensitivityRow]] = {}
    for row in rows:
        curves.setdefault(row.target, []).append(row)
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=110)
    markers = "os^vD<>px*h"
    for i, (label, points) in enumerate(curves.items()):
        points = sorted(points, key=lambda r: r.sparsity)
        ax.plot(
            [100 * r.sparsity for r in points],
            [r.top1 for r in points],
            marker=markers[i % len(markers)],
            markersize=4,
            label=label,
        )
    ax.set_xlabel("filters removed (%)")
    ax.set_ylabel("test top-1 (%), no fine-tuning")
    ax.set_title("pruning sensitivity")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="x-small", ncol=2 if len(curves) > 8 else 1)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
