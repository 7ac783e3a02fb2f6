"""Bar charts of a transfer-learning depth sweep: accuracy, loss and energy vs depth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_depth"]

_BARS = [
    ("accuracy", "test top-1 (%)", "depth_accuracy.png"),
    ("loss", "test loss", "depth_loss.png"),
    ("energy_nj", "energy of the trainable part (nJ/sample)", "depth_energy.png"),
]


def plot_depth(cases: Sequence[Any], out_dir: str | Path) -> list[Path]:
    """One bar chart per quantity over the depth cases (objects with ``depth``,
    ``accuracy``, ``loss``, ``energy_nj``); returns the written PNGs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    depths = [str(c.depth) for c in cases]
    written = []
    for attr, label, filename in _BARS:
        fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=110)
        values = [getattr(c, attr) for c in cases]
        ax.bar(depths, values, color="#4c72b0")
        for x, v in zip(depths, values, strict=True):
            ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize="small")
        ax.set_xlabel("layers trained (last N)")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
