"""The memory timeline of one training step (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain._atomic import atomic_writer  # noqa: E402

if TYPE_CHECKING:
    from edgetrain.cost.memory import MemoryTimeline

__all__ = ["plot_memory_timeline"]

_COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "update": "#55A868"}


def plot_memory_timeline(
    timelines: dict[str, MemoryTimeline], path: str | Path, title: str = ""
) -> Path:
    """One line per step plan: the bytes alive while each op of the step runs (op index
    on x), phases shaded for the first plan, each plan's peak marked."""
    fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=110)
    for i, (label, timeline) in enumerate(timelines.items()):
        live = [b / 2**20 for *_, b in timeline.events]
        ax.plot(
            range(len(live)), live, label=f"{label} (peak {timeline.peak_bytes / 2**20:.2f} MiB)"
        )
        if i == 0:
            start = 0
            for phase in _COLORS:
                count = sum(1 for p, *_ in timeline.events if p == phase)
                if count:
                    ax.axvspan(start, start + count, color=_COLORS[phase], alpha=0.08)
                    ax.text(start + count / 2, 0, phase, ha="center", va="bottom", fontsize=8)
                start += count
    ax.set_xlabel("op of the training step")
    ax.set_ylabel("MiB alive")
    ax.set_title(title or "memory over one training step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return Path(path)
