"""Plots of an adaptive layer schedule (``adaptive_schedule.jsonl`` of the
``adaptive-schedule`` callback): the updates each layer got per cycle in every epoch
(heat map), the smoothed learning signal that chose them, and the cycle's operations and
peak memory relative to updating every layer every step, against validation accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgetrain.engine import JsonLines  # noqa: E402
from edgetrain.finetune.adaptive import LOG_NAME  # noqa: E402
from edgetrain.finetune.schedule import Schedule  # noqa: E402
from edgetrain.report.extract import RunRecord  # noqa: E402

__all__ = ["has_adaptive_schedule", "plot_adaptive_schedule"]


def has_adaptive_schedule(run: RunRecord) -> bool:
    return (run.path / LOG_NAME).is_file()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def plot_adaptive_schedule(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """One ``adaptive-schedule-<run>.png`` per run with an adaptive schedule's log."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        records = JsonLines(run.path / LOG_NAME).read()
        if not records:
            continue
        layers = list(records[-1]["layers"])
        epochs = [int(r["epoch"]) for r in records]
        schedules = [Schedule.parse(r["schedule"]) for r in records]
        cycle = schedules[0].cycle_length
        counts = np.array([[sum(row) for row in s.pattern] for s in schedules], dtype=float).T
        signals = np.array(
            [[math.nan if v is None else float(v) for v in r["signals"]] for r in records]
        ).T
        top1 = {int(m["epoch"]): m.get("val_top1") for m in run.metrics if "epoch" in m}
        fig, (ax0, ax1, ax2) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
        image = ax0.imshow(
            counts,
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=cycle,
            extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(layers) - 0.5, -0.5),
        )
        ax0.set_yticks(range(len(layers)), layers)
        ax0.set_title(f"{run.name}: updates per cycle of {cycle} steps (output layer on top)")
        fig.colorbar(image, ax=ax0, label="updates per cycle")
        for i, name in enumerate(layers):
            ax1.plot(epochs, signals[i], marker=".", label=name)
        ax1.set_yscale("log")
        ax1.set_ylabel("learning signal\n(smoothed)")
        ax1.legend(fontsize="small", ncol=min(len(layers), 4))
        ax2.plot(
            epochs, [r["schedule_relative_ops"] for r in records], marker=".", label="ops/step"
        )
        ax2.plot(
            epochs,
            [r["schedule_relative_peak_memory"] for r in records],
            marker=".",
            label="peak memory",
        )
        ax2.set_ylabel("relative to every\nlayer every step")
        ax2.set_xlabel("epoch")
        ax2.legend(loc="lower left", fontsize="small")
        accuracy = [top1.get(e) for e in epochs]
        if any(a is not None for a in accuracy):
            twin = ax2.twinx()
            twin.plot(
                epochs,
                [math.nan if a is None else a for a in accuracy],
                color="black",
                linestyle="--",
                label="val top-1",
            )
            twin.set_ylabel("val top-1 %")
            twin.legend(loc="lower right", fontsize="small")
        fig.tight_layout()
        path = folder / f"adaptive-schedule-{_slug(run.name)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
