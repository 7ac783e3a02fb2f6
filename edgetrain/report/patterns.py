"""Plots of activation-pattern measurements (``patterns.jsonl`` of the ``ap-monitor``).

Get the data (plain dataclasses, testable without drawing):

- :func:`pattern_history`: per metric a layer x measurement matrix of one run;
- :func:`entropy_profile`: relative entropy per layer at chosen epochs, mean and
  min/max band over several runs (seeds).

Draw it:

- ``patterns.png``: layer x time heat maps of each metric and of bucket occupancy;
- ``patterns_entropy.png``: relative entropy vs layer index at chosen times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgetrain.diagnostics.measure import read_pattern_records  # noqa: E402
from edgetrain.diagnostics.metrics import METRICS  # noqa: E402
from edgetrain.report.extract import RunRecord  # noqa: E402

__all__ = [
    "EntropyProfile",
    "PatternHistory",
    "entropy_profile",
    "has_patterns",
    "pattern_history",
    "plot_entropy_profile",
    "plot_pattern_history",
    "plot_patterns",
]

_TITLES = {
    "distinct": "distinct patterns (log10)",
    "changes": "changes vs previous",
    "jaccard_init": "weighted Jaccard to init",
    "jaccard_prev": "weighted Jaccard to previous",
    "jaccard_final": "weighted Jaccard to final",
    "top_share": "most-frequent-pattern share",
    "entropy": "entropy (bits)",
    "relative_entropy": "relative entropy",
    "occupancy": "bucket occupancy",
}


@dataclass(frozen=True)
class PatternHistory:
    """The pattern measurements of one run.

    Attributes:
        run: the run's name.
        steps, epochs: when each measurement was taken (optimizer steps, epochs).
        layers: activation layers in model order (rows of every matrix).
        values: metric -> ``(layers, measurements)`` array, NaN where not recorded
            (no previous measurement, no final counts, exact layers' occupancy).
    """

    run: str
    steps: np.ndarray
    epochs: np.ndarray
    layers: list[str]
    values: dict[str, np.ndarray]

    def available(self) -> list[str]:
        """Metrics with at least one recorded value."""
        return [m for m in METRICS if m in self.values and np.isfinite(self.values[m]).any()]


def has_patterns(run: RunRecord) -> bool:
    return bool(read_pattern_records(run.path))


def pattern_history(run: RunRecord) -> PatternHistory | None:
    """The run's ``patterns.jsonl`` as matrices; None when it has none."""
    records = read_pattern_records(run.path)
    if not records:
        return None
    layers: list[str] = []
    for r in records:
        layers += [n for n in r["layers"] if n not in layers]
    values = {m: np.full((len(layers), len(records)), np.nan) for m in METRICS}
    for j, r in enumerate(records):
        for i, name in enumerate(layers):
            entry = r["layers"].get(name, {})
            for m in METRICS:
                if entry.get(m) is not None:
                    values[m][i, j] = float(entry[m])
    return PatternHistory(
        run.name,
        np.array([r["step"] for r in records]),
        np.array([r["epoch"] for r in records], dtype=float),
        layers,
        values,
    )


@dataclass(frozen=True)
class EntropyProfile:
    """Relative entropy per layer at chosen epochs over one or several runs.

    Attributes:
        layers: layers present in every run, in model order.
        epochs: the epochs asked for; each run uses its measurement nearest to them.
        mean, low, high: ``(epochs, layers)`` mean, minimum and maximum over the runs.
        runs: how many runs were combined.
    """

    layers: list[str]
    epochs: list[float]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    runs: int


def entropy_profile(
    histories: Sequence[PatternHistory], epochs: Sequence[float] | None = None
) -> EntropyProfile:
    """Relative entropy vs layer at ``epochs`` (default: start, middle, end of the
    shortest run), combined over ``histories`` (seeds of one configuration)."""
    if not histories:
        raise ValueError("entropy_profile needs at least one run")
    layers = [n for n in histories[0].layers if all(n in h.layers for h in histories[1:])]
    if epochs is None:
        end = min(float(h.epochs[-1]) for h in histories)
        epochs = [0.0, end / 2, end] if end > 0 else [0.0]
    stack = np.full((len(histories), len(epochs), len(layers)), np.nan)
    for k, h in enumerate(histories):
        rows = [h.layers.index(n) for n in layers]
        for t, epoch in enumerate(epochs):
            column = int(np.argmin(np.abs(h.epochs - epoch)))
            stack[k, t] = h.values["relative_entropy"][rows, column]
    return EntropyProfile(
        layers,
        [float(e) for e in epochs],
        stack.mean(0),
        stack.min(0),
        stack.max(0),
        len(histories),
    )


def plot_pattern_history(history: PatternHistory, path: str | Path) -> Path:
    """Layer x time heat maps of every recorded metric into one PNG."""
    metrics = history.available()
    cols = 3
    rows = max(1, math.ceil(len(metrics) / cols))
    height = max(2.2, 0.22 * len(history.layers) + 1.4)
    fig, axes = plt.subplots(rows, cols, figsize=(13.0, height * rows), dpi=100, squeeze=False)
    ticks = range(0, len(history.epochs), max(1, len(history.epochs) // 8))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        data = history.values[metric]
        if metric == "distinct":
            data = np.log10(np.maximum(data, 1.0))
        if metric == "changes":  # signed: white is no net change
            reach = float(np.nanmax(np.abs(data))) or 1.0
            vmin, vmax, cmap = -reach, reach, "coolwarm"
        elif metric in ("distinct", "entropy", "occupancy"):
            vmin, vmax, cmap = None, None, "viridis"
        else:  # shares and similarities
            vmin, vmax, cmap = 0.0, 1.0, "viridis"
        im = ax.imshow(
            np.ma.masked_invalid(data),
            aspect="auto",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_title(_TITLES[metric], fontsize="medium")
        ax.set_yticks(range(len(history.layers)), history.layers, fontsize=6)
        ax.set_xticks(list(ticks), [f"{history.epochs[i]:.2g}" for i in ticks], fontsize=7)
        ax.set_xlabel("epoch (one column per measurement)", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.05)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"{history.run}: activation patterns per layer over training")
    return _save(fig, path)


def plot_entropy_profile(profile: EntropyProfile, path: str | Path, title: str = "") -> Path:
    """Relative entropy vs layer index, one line per epoch, min/max band over runs."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=100)
    x = np.arange(len(profile.layers))
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(profile.epochs)))
    for t, epoch in enumerate(profile.epochs):
        ax.plot(x, profile.mean[t], marker=".", color=colours[t], label=f"epoch {epoch:.3g}")
        if profile.runs > 1:
            ax.fill_between(x, profile.low[t], profile.high[t], color=colours[t], alpha=0.2)
    ax.set_xticks(x, profile.layers, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("activation layer")
    ax.set_ylabel("relative entropy H / min(channels, log2 N)")
    ax.set_ylim(0.0, 1.05)
    runs = f" (mean, band: min-max over {profile.runs} runs)" if profile.runs > 1 else ""
    ax.set_title((title or "relative entropy per layer") + runs, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write and close ``fig``; returns the path written."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_patterns(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """For one run: ``patterns.png`` and ``patterns_entropy.png`` in ``out_dir``. For
    several: ``patterns_entropy.png`` over all of them (as seeds, with bands). Runs
    without measurements are skipped."""
    histories = [h for h in (pattern_history(r) for r in runs) if h is not None]
    folder = Path(out_dir)
    if len(histories) == 1:
        (h,) = histories
        profile = entropy_profile([h])
        return [
            plot_pattern_history(h, folder / "patterns.png"),
            plot_entropy_profile(
                profile, folder / "patterns_entropy.png", f"{h.run}: relative entropy per layer"
            ),
        ]
    if histories:
        profile = entropy_profile(histories)
        return [plot_entropy_profile(profile, folder / "patterns_entropy.png")]
    return []
