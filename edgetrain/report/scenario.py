"""Operations-aware comparison of fine-tuning runs (the scenario plots).

For each run the cost model gives the MACs of an average training step (its layer
schedule's cycle, or every trainable layer), so the metrics' cumulative step counts turn
into cumulative training MACs. From these: accuracy vs cumulative MACs, best-so-far
accuracy, the operations each run needed to reach the reference run's best accuracy, and
epochs-to-target against the operation reduction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain import models  # noqa: E402
from edgetrain.cost import analyze  # noqa: E402
from edgetrain.engine import load_checkpoint  # noqa: E402
from edgetrain.finetune import Schedule, schedule_cost  # noqa: E402
from edgetrain.report.extract import RunRecord  # noqa: E402

__all__ = ["RunOps", "plot_scenario", "run_ops"]


@dataclass(frozen=True)
class RunOps:
    """A run's training cost and how fast it reached the reference accuracy."""

    name: str
    step_macs: float
    relative_ops: float
    epochs_to_target: int | None
    macs_to_target: float | None


def _step_macs(run: RunRecord) -> float:
    arch = load_checkpoint(run.path / "checkpoints" / "last.pt")["architecture"] or {}
    model = models.create(arch["name"], **arch.get("options", {}))
    shape = tuple(arch["input_shape"])
    batch = int(run.config.get("data", {}).get("batch_size", 1))
    for cb in run.config.get("callbacks", []):
        if cb.get("name") == "layer-schedule":
            schedule = Schedule.parse(cb["schedule"])
            return schedule_cost(model, shape, schedule, batch_size=batch).average_step_macs
    freeze = run.config.get("model", {}).get("freeze", [])
    if freeze:
        models.freeze(model, freeze)
    return float(analyze(model, shape, plans=["all"], batch_size=batch).steps()[0].step_macs)


def run_ops(runs: Sequence[RunRecord], reference: int = 0) -> list[RunOps]:
    """Step MACs, ops relative to the reference run, and epochs/MACs to reach the
    reference run's best validation accuracy (None when never reached)."""
    per_step = [_step_macs(r) for r in runs]
    target = max(m["val_top1"] for m in runs[reference].metrics if "val_top1" in m)
    out = []
    for run, macs in zip(runs, per_step, strict=True):
        hit = next((m for m in run.metrics if m.get("val_top1", -1) >= target), None)
        out.append(
            RunOps(
                run.name,
                macs,
                macs / per_step[reference],
                None if hit is None else int(hit["epoch"]),
                None if hit is None else macs * hit["step"],
            )
        )
    return out


def plot_scenario(runs: Sequence[RunRecord], ops: Sequence[RunOps], out_dir: str | Path) -> Path:
    """``scenario.png``: accuracy vs cumulative MACs, best-so-far accuracy, and
    epochs-to-target vs operation reduction."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=100)
    for run, o in zip(runs, ops, strict=True):
        pts = [m for m in run.metrics if "val_top1" in m]
        macs = [o.step_macs * m["step"] for m in pts]
        acc = [m["val_top1"] for m in pts]
        axes[0].plot(macs, acc, marker=".", label=run.name)
        best, best_so_far = float("-inf"), []
        for a in acc:
            best = max(best, a)
            best_so_far.append(best)
        axes[1].plot([m["epoch"] for m in pts], best_so_far, marker=".", label=run.name)
        if o.epochs_to_target is not None:
            axes[2].scatter(1 - o.relative_ops, o.epochs_to_target)
            axes[2].annotate(run.name, (1 - o.relative_ops, o.epochs_to_target), fontsize="x-small")
    axes[0].set(
        xlabel="cumulative training MACs", ylabel="val top-1 %", title="accuracy vs operations"
    )
    axes[0].set_xscale("log")
    axes[1].set(xlabel="epoch", ylabel="best val top-1 so far %", title="best so far")
    axes[2].set(
        xlabel="operation reduction per step",
        ylabel="epochs to reference best",
        title="epochs to target vs ops saved",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    path = out / "scenario.png"
    fig.savefig(path)
    plt.close(fig)
    return path
