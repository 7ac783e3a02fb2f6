"""Training-curve plots (matplotlib, PNG): loss and accuracy per epoch, runs overlaid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain.report.extract import RunRecord, series  # noqa: E402

__all__ = ["CURVES", "plot_curves"]

# (file stem, title, y label, [(metric key, line style, label suffix)])
CURVES: list[tuple[str, str, str, list[tuple[str, str, str]]]] = [
    ("loss", "Loss", "cross-entropy", [("train_loss", "--", "train"), ("val_loss", "-", "val")]),
    ("accuracy", "Top-1 accuracy", "%", [("train_top1", "--", "train"), ("val_top1", "-", "val")]),
]


def plot_curves(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Draw one PNG per curve family into ``out_dir``; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for stem, title, ylabel, lines in CURVES:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        drawn = False
        for i, run in enumerate(runs):
            for key, style, suffix in lines:
                xs, ys = series(run, key)
                if not xs:
                    continue
                label = f"{run.name} {suffix}" if len(runs) > 1 else suffix
                ax.plot(xs, ys, style, color=colors[i % len(colors)], marker=".", label=label)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
