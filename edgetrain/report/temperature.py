"""The per-layer AP temperature over training (``temperature.jsonl`` of the
``temperature-monitor`` callback): one line per activation layer and the network's mean,
against training progress, with the learning rate on a second axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain.diagnostics.temperature_monitor import TEMPERATURE_FILE, read_temperatures  # noqa: E402
from edgetrain.report.extract import RunRecord  # noqa: E402

__all__ = ["has_temperatures", "plot_temperatures"]


def has_temperatures(run: RunRecord) -> bool:
    return (run.path / TEMPERATURE_FILE).is_file()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def plot_temperatures(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """One ``temperature-<run>.png`` per run with temperature measurements."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        rows = read_temperatures(run.path)
        if not rows:
            continue
        epochs = [r["step"] for r in rows]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        layers = list(rows[0]["temperature"])
        colours = plt.get_cmap("viridis")
        for i, name in enumerate(layers):
            ax.plot(
                epochs,
                [r["temperature"].get(name, float("nan")) for r in rows],
                color=colours(i / max(len(layers) - 1, 1)),
                linewidth=0.8,
                label=name,
            )
        ax.plot(epochs, [r["mean_temperature"] for r in rows], color="red", label="mean")
        ax.set_xlabel("training step")
        ax.set_ylabel("AP temperature  -log2(1 - D)")
        ax.set_title(f"{run.name}: temperature per activation layer (first layer dark)")
        ax.legend(fontsize="x-small", ncol=max(1, len(layers) // 8), loc="upper right")
        twin = ax.twinx()
        twin.plot(epochs, [r["lr"] for r in rows], color="grey", linestyle=":", label="lr")
        twin.set_yscale("log")
        twin.set_ylabel("learning rate (dotted)")
        fig.tight_layout()
        path = folder / f"temperature-{_slug(run.name)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
