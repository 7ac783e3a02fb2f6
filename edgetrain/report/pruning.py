"""Reports of runs whose architecture changed while training (PruneTrain, adaptive batch).

Reads the per-epoch records PruneTrain writes (``channels``, ``params``,
``inference_macs``, ``train_macs``, ``baseline_train_macs``) and draws:

- ``channels.png``: output channels per layer over epochs (heat map, share of the start);
- ``pruning.png``: parameters and inference MACs per epoch, cumulative training MACs
  against the unpruned baseline, epoch time, accuracy; batch size and LR when they vary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgetrain.report.extract import RunRecord  # noqa: E402

__all__ = ["PruningRow", "channel_matrix", "is_pruning_run", "plot_pruning", "pruning_rows"]


@dataclass(frozen=True)
class PruningRow:
    """One epoch of a pruned run: the architecture it trained and what it cost."""

    epoch: int
    val_top1: float | None
    params: int
    inference_macs: int
    train_macs: float
    baseline_train_macs: float
    cumulative_train_macs: float
    cumulative_baseline_macs: float
    epoch_time: float
    batch_size: int | None
    lr: float | None

    @property
    def cumulative_ratio(self) -> float:
        """Cumulative training MACs so far relative to the unpruned baseline."""
        return (
            self.cumulative_train_macs / self.cumulative_baseline_macs
            if self.cumulative_baseline_macs
            else 1.0
        )


def is_pruning_run(run: RunRecord) -> bool:
    return any("channels" in m for m in run.metrics)


def pruning_rows(run: RunRecord) -> list[PruningRow]:
    """Per-epoch rows of a PruneTrain run (empty for other runs)."""
    rows: list[PruningRow] = []
    cum = cum_base = 0.0
    for m in run.metrics:
        if "train_macs" not in m:
            continue
        cum += float(m["train_macs"])
        cum_base += float(m.get("baseline_train_macs", m["train_macs"]))
        rows.append(
            PruningRow(
                epoch=int(m["epoch"]),
                val_top1=m.get("val_top1"),
                params=int(m.get("params_after", m.get("params", 0))),
                inference_macs=int(m.get("inference_macs_after", m.get("inference_macs", 0))),
                train_macs=float(m["train_macs"]),
                baseline_train_macs=float(m.get("baseline_train_macs", m["train_macs"])),
                cumulative_train_macs=cum,
                cumulative_baseline_macs=cum_base,
                epoch_time=float(m.get("epoch_time", 0.0)),
                batch_size=m.get("batch_size"),
                lr=m.get("lr"),
            )
        )
    return rows


def channel_matrix(run: RunRecord) -> tuple[list[str], list[int], np.ndarray]:
    """``(layers, epochs, counts)``: output channels of each layer (rows, forward order as
    first logged) after each epoch (columns); 0 where a layer was removed."""
    records = [m for m in run.metrics if "channels" in m]
    layers: list[str] = []
    for m in records:
        for name in m["channels"]:
            if name not in layers:
                layers.append(name)
    counts = np.zeros((len(layers), len(records)), dtype=np.int64)
    for j, m in enumerate(records):
        for i, name in enumerate(layers):
            counts[i, j] = int(m["channels"].get(name, 0))
    return layers, [int(m["epoch"]) for m in records], counts


def plot_pruning(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Draw ``channels.png`` per pruned run and ``pruning.png`` over all of them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pruned = [r for r in runs if is_pruning_run(r)]
    written: list[Path] = []
    for run in pruned:
        layers, epochs, counts = channel_matrix(run)
        if not layers:
            continue
        start = np.maximum(counts[:, :1], 1)
        fig, ax = plt.subplots(figsize=(7.0, max(3.0, 0.22 * len(layers) + 1.2)), dpi=110)
        im = ax.imshow(counts / start, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(layers)), layers, fontsize=6)
        step = max(1, len(epochs) // 12)
        ax.set_xticks(range(0, len(epochs), step), [str(e) for e in epochs[::step]])
        ax.set_xlabel("epoch")
        ax.set_title(f"{run.name}: channels kept per layer (share of epoch {epochs[0]})")
        fig.colorbar(im, ax=ax, fraction=0.04)
        fig.tight_layout()
        stem = "channels" if len(pruned) == 1 else f"channels_{_slug(run.name)}"
        path = out / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    rows = {r.name: pruning_rows(r) for r in runs}
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return written
    fig, axes = plt.subplots(2, 3, figsize=(13.0, 6.8), dpi=100)
    panels = [
        ("parameters", lambda r: r.params),
        ("inference MACs / sample", lambda r: r.inference_macs),
        ("cumulative training MACs / baseline", lambda r: r.cumulative_ratio),
        ("epoch time (s)", lambda r: r.epoch_time),
        ("val top-1 (%)", lambda r: r.val_top1),
        ("batch size", lambda r: r.batch_size),
    ]
    for ax, (title, get) in zip(axes.flat, panels, strict=True):
        for name, rs in rows.items():
            pts = [(r.epoch, get(r)) for r in rs if get(r) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=name)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    path = out / "pruning.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
