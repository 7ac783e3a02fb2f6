"""Operations-aware comparison of fine-tuning runs (the scenario plots).

For each run the cost model gives the MACs of an average training step (its layer
schedule's cycle, or every trainable layer), so the metrics' cumulative step counts turn
into cumulative training MACs. From these: accuracy vs cumulative MACs, best-so-far
accuracy, the operations each run needed to reach the reference run's best accuracy, and
epochs-to-target against the operation reduction.

The conventional fine-tuning runs among them are reference lines (as in the spec):
conventional fine-tuning with N frozen layers (the run training the most layers, every
step) and the same with one more layer frozen (N+1), e.g. ``4444`` and ``4440`` of
``edgetrain finetune compare``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain import models  # noqa: E402
from edgetrain.cost import analyze  # noqa: E402
from edgetrain.engine import load_checkpoint  # noqa: E402
from edgetrain.finetune import Schedule, schedule_cost  # noqa: E402
from edgetrain.report.extract import RunRecord  # noqa: E402
from edgetrain.runs import load_trained_model  # noqa: E402

__all__ = ["ReferenceRun", "RunOps", "plot_scenario", "reference_runs", "run_ops"]

# (colour, line style) of the reference lines: conventional, then one more layer frozen.
_REFERENCE_STYLES = (("black", "--"), ("dimgray", ":"))


@dataclass(frozen=True)
class RunOps:
    """A run's training cost and how fast it reached the reference accuracy."""

    name: str
    step_macs: float
    relative_ops: float
    epochs_to_target: int | None
    macs_to_target: float | None


@dataclass(frozen=True)
class ReferenceRun:
    """A conventional run drawn as a reference: ``extra_frozen`` is 0 for conventional
    fine-tuning (N frozen layers) and 1 for one more layer frozen (N+1)."""

    index: int
    name: str
    trained_layers: int
    extra_frozen: int
    best_accuracy: float

    @property
    def label(self) -> str:
        return "conventional" if self.extra_frozen == 0 else "conventional, 1 more frozen"


def _schedule(run: RunRecord) -> Schedule | None:
    for cb in run.config.get("callbacks", []):
        if cb.get("name") == "layer-schedule":
            return Schedule.parse(cb["schedule"])
    return None


def _model(run: RunRecord, freeze: bool) -> tuple[Any, tuple[int, ...]]:
    """The run's model as its last checkpoint holds it (pruned or grown architecture,
    with the recipe's ``model.freeze`` applied when ``freeze``) and its input shape."""
    file = run.path / "checkpoints" / "last.pt"
    arch = load_checkpoint(file)["architecture"] or {}
    model = load_trained_model(file)
    frozen = run.config.get("model", {}).get("freeze", [])
    if freeze and frozen:
        models.freeze(model, frozen)
    return model, tuple(arch["input_shape"])


def _adaptive(run: RunRecord) -> bool:
    return any(cb.get("name") == "adaptive-schedule" for cb in run.config.get("callbacks", []))


def _logged_macs(run: RunRecord) -> list[tuple[int, float]]:
    """(global step, MACs per step) of each epoch whose schedule logged its cost (an
    adaptive schedule: ``schedule_step_macs`` per sample, times the batch)."""
    batch = int(run.config.get("data", {}).get("batch_size", 1))
    return [
        (int(m["step"]), batch * float(m["schedule_step_macs"]))
        for m in run.metrics
        if "schedule_step_macs" in m and "step" in m
    ]


def _step_macs(run: RunRecord) -> float:
    batch = int(run.config.get("data", {}).get("batch_size", 1))
    logged = _logged_macs(run)
    if logged:  # the mean over the steps trained
        steps = [b - a for (a, _), (b, _) in zip([(0, 0.0), *logged], logged, strict=False)]
        return sum(n * macs for n, (_, macs) in zip(steps, logged, strict=True)) / max(
            sum(steps), 1
        )
    schedule = _schedule(run)
    model, shape = _model(run, freeze=schedule is None)
    if schedule is not None:
        return schedule_cost(model, shape, schedule, batch_size=batch).average_step_macs
    return float(
        analyze(model, shape, plans=["all"], batch_size=batch, memory="layerwise")
        .steps()[0]
        .step_macs
    )


def reference_runs(runs: Sequence[RunRecord]) -> list[ReferenceRun]:
    """The conventional runs to draw as references, conventional first.

    A run is conventional when it has no layer schedule or a ``conventional``-mode one
    (every trained row updated every step at the base rate: ``4444``, ``4440``). The one
    training the most weight layers is *conventional* (N frozen); one training exactly
    one layer fewer is *one more frozen* (N+1). Among several runs of one depth (the
    trials of an LR grid), the one with the best validation top-1 is taken.
    """
    found: dict[int, tuple[float, int]] = {}  # trained layers -> (best top-1, run index)
    for i, run in enumerate(runs):
        best = run.best
        schedule = _schedule(run)
        if (
            best is None
            or _adaptive(run)
            or (schedule is not None and schedule.mode != "conventional")
        ):
            continue
        if schedule is not None:
            trained = schedule.trained_rows
        else:
            model, _ = _model(run, freeze=True)
            trained = sum(
                any(p.requires_grad for p in m.parameters())
                for _, m in models.parameter_layers(model)
            )
        accuracy = float(best["val_top1"])
        if trained not in found or accuracy > found[trained][0]:  # ties: the first run
            found[trained] = (accuracy, i)
    if not found:
        return []
    deepest = max(found)
    return [
        ReferenceRun(found[n][1], runs[found[n][1]].name, n, extra, found[n][0])
        for extra, n in enumerate((deepest, deepest - 1))
        if n in found
    ]


def run_ops(runs: Sequence[RunRecord], reference: int = 0) -> list[RunOps]:
    """Step MACs, ops relative to the reference run, and epochs/MACs to reach the
    reference run's best validation accuracy (None when never reached)."""
    per_step = [_step_macs(r) for r in runs]
    target = max(m["val_top1"] for m in runs[reference].metrics if "val_top1" in m)
    out = []
    for run, macs in zip(runs, per_step, strict=True):
        hit = next((m for m in run.metrics if m.get("val_top1", -1) >= target), None)
        to_target = None
        if hit is not None:
            logged = [(step, m) for step, m in _logged_macs(run) if step <= hit["step"]]
            previous, to_target = 0, 0.0
            for step, step_macs in logged:  # each epoch at what it cost
                to_target += (step - previous) * step_macs
                previous = step
            to_target += (hit["step"] - previous) * macs
        out.append(
            RunOps(
                run.name,
                macs,
                macs / per_step[reference],
                None if hit is None else int(hit["epoch"]),
                to_target,
            )
        )
    return out


def plot_scenario(
    runs: Sequence[RunRecord],
    ops: Sequence[RunOps],
    out_dir: str | Path,
    references: Sequence[ReferenceRun] | None = None,
) -> Path:
    """``scenario.png``: accuracy vs cumulative MACs, best-so-far accuracy, and
    epochs-to-target vs operation reduction.

    The reference runs (default: :func:`reference_runs`) are drawn in black dashed
    (conventional, N frozen) and grey dotted (one more layer frozen, N+1) lines, each
    with a horizontal line at its best accuracy, in the first two panels.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs = {r.index: r for r in (reference_runs(runs) if references is None else references)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=100)
    for i, (run, o) in enumerate(zip(runs, ops, strict=True)):
        pts = [m for m in run.metrics if "val_top1" in m]
        macs = [o.step_macs * m["step"] for m in pts]
        acc = [m["val_top1"] for m in pts]
        best, best_so_far = float("-inf"), []
        for a in acc:
            best = max(best, a)
            best_so_far.append(best)
        epochs = [m["epoch"] for m in pts]
        ref = refs.get(i)
        if ref is None:
            axes[0].plot(macs, acc, marker=".", label=run.name)
            axes[1].plot(epochs, best_so_far, marker=".", label=run.name)
        else:
            color, style = _REFERENCE_STYLES[min(ref.extra_frozen, 1)]
            label = f"{ref.label} ({ref.trained_layers} trained): {run.name}"
            line = {"color": color, "linestyle": style, "linewidth": 2.0}
            axes[0].plot(macs, acc, marker=".", label=label, **line)
            axes[1].plot(epochs, best_so_far, marker=".", label=label, **line)
            for ax in axes[:2]:
                ax.axhline(ref.best_accuracy, color=color, linestyle=style, linewidth=0.8)
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
    if refs:
        axes[1].legend(fontsize="x-small")
    fig.tight_layout()
    path = out / "scenario.png"
    fig.savefig(path)
    plt.close(fig)
    return path
