"""Accuracy of progressive stochastic binarization against weight samples.

After the paper "Progressive Stochastic Binarization of Deep Networks": a trained float
model is converted to PSB (:func:`~edgetrain.compress.to_psb`), optionally fine-tuned
with ``t`` samples per forward through the straight-through estimator (the
*train-samples*; 0 means no fine-tuning), and evaluated at several *eval-samples*. The
grid of top-1 accuracies shows how many samples inference needs, and how much
fine-tuning at a given sample count buys. :func:`plot_sample_grid` draws it
(:func:`draw_sample_grid` onto axes of a larger figure).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain.compress.psb.layers import psb_layers, set_samples, to_psb
from edgetrain.engine import Trainer
from edgetrain.engine.evaluate import evaluate
from edgetrain.errors import ConfigError

__all__ = [
    "PSBScore",
    "SampleGrid",
    "draw_sample_grid",
    "finetune_psb",
    "plot_sample_grid",
    "psb_accuracy",
    "sample_grid",
]


class PSBScore(NamedTuple):
    """Test top-1 (percent) and mean cross-entropy of a PSB model: mean and standard
    deviation over repeated evaluations."""

    top1: float
    top1_std: float
    loss: float
    loss_std: float


def psb_accuracy(
    model: nn.Module,
    data: Dataset,
    samples: int,
    repeats: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> PSBScore:
    """Top-1 and loss of a PSB model over ``repeats`` evaluations at ``samples`` weight
    samples (each draws new samples at every batch).

    The model's sample counts are restored afterwards.

    Example:
        >>> score = psb_accuracy(psb_net, test_set, samples=8, repeats=5)  # doctest: +SKIP
        >>> score.top1, score.top1_std  # doctest: +SKIP
    """
    saved = [(m, m.psb) for _, m in psb_layers(model)]
    set_samples(model, samples)
    device = next(model.parameters()).device
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    results = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(repeats):
                results.append(evaluate(model, loader, nn.CrossEntropyLoss(), device))
    finally:
        for module, config in saved:
            module.psb = config
    top1 = [r["top1"] for r in results]
    loss = [r["loss"] for r in results]
    return PSBScore(
        statistics.fmean(top1),
        statistics.pstdev(top1),
        statistics.fmean(loss),
        statistics.pstdev(loss),
    )


def finetune_psb(
    model: nn.Module,
    train_data: Dataset,
    samples: int,
    epochs: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    val_data: Dataset | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Fine-tune a PSB model in place through the straight-through estimator.

    Every training forward draws ``samples`` weight samples per layer; the gradient
    reaches the real weights as if the sample were the real weight. Pruned weights stay
    zero. Uses the engine's Trainer (SGD with momentum, constant learning rate).

    Returns:
        The Trainer's per-epoch records.

    Example:
        >>> net = to_psb(trained, samples=4)  # doctest: +SKIP
        >>> finetune_psb(net, train_set, samples=4, epochs=2)  # doctest: +SKIP
    """
    if samples < 1:
        raise ConfigError(f"finetune_psb samples must be >= 1, got {samples}")
    set_samples(model, samples)
    trainer = Trainer(
        model,
        train_data,
        val_data=val_data,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=weight_decay),
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=False,
    )
    state = trainer.fit(epochs)
    model.eval()
    return list(state.history)


@dataclass
class SampleGrid:
    """Top-1 (percent) by train-samples (rows) and eval-samples (columns).

    Attributes:
        scores: one :class:`PSBScore` per cell, ``scores[row][column]``.
        float_top1 / float_loss: the float model before conversion.
        repeats: evaluations per cell.
        settings: the PSB options and fine-tuning settings used.
    """

    train_samples: list[int]
    eval_samples: list[int]
    scores: list[list[PSBScore]]
    float_top1: float
    float_loss: float
    repeats: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def top1(self) -> list[list[float]]:
        """Mean top-1 per cell."""
        return [[c.top1 for c in row] for row in self.scores]

    def rows(self) -> list[dict[str, Any]]:
        """One record per (train-samples, eval-samples) cell."""
        return [
            {"train_samples": t, "eval_samples": e, **self.scores[i][j]._asdict()}
            for i, t in enumerate(self.train_samples)
            for j, e in enumerate(self.eval_samples)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_samples": list(self.train_samples),
            "eval_samples": list(self.eval_samples),
            "cells": self.rows(),
            "float_top1": self.float_top1,
            "float_loss": self.float_loss,
            "repeats": self.repeats,
            "settings": dict(self.settings),
        }

    def markdown(self) -> str:
        """The grid as a Markdown table (mean ± std)."""
        head = "| train \\ eval samples | " + " | ".join(map(str, self.eval_samples)) + " |"
        rule = "|---:|" + "---:|" * len(self.eval_samples)
        lines = [head, rule]
        for i, t in enumerate(self.train_samples):
            cells = [f"{c.top1:.1f} ± {c.top1_std:.1f}" for c in self.scores[i]]
            lines.append(f"| {t if t else 'none'} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def sample_grid(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset,
    train_samples: Sequence[int] = (0, 1, 4, 16),
    eval_samples: Sequence[int] = (1, 2, 4, 8, 16, 32),
    epochs: int = 2,
    lr: float = 0.01,
    repeats: int = 3,
    batch_size: int = 64,
    seed: int = 0,
    **psb_options: Any,
) -> SampleGrid:
    """Evaluate the train-samples x eval-samples grid of a trained float model.

    For every train-samples ``t`` a copy of ``model`` is converted with :func:`to_psb`
    (``psb_options``: ``fixed_point``, ``prune``, ``p_bits``, ``layers``,
    ``input_shape``), fine-tuned ``epochs`` epochs at ``t`` samples (``t = 0``: not
    fine-tuned), then evaluated ``repeats`` times at every eval-samples count.

    Args:
        model: the trained float model (not changed).
        train_data / test_data: labelled data sets.
        train_samples / eval_samples: the rows and columns.
        epochs / lr / batch_size: STE fine-tuning settings.
        repeats: evaluations per cell (PSB accuracy is random).
        seed: seeds fine-tuning and evaluation.

    Example:
        >>> grid = sample_grid(trained, train_set, test_set, (0, 4), (1, 8))  # doctest: +SKIP
        >>> print(grid.markdown())  # doctest: +SKIP
    """
    if not train_samples or not eval_samples or min(eval_samples) < 1 or min(train_samples) < 0:
        raise ConfigError(
            "sample_grid needs train_samples >= 0 (0: no fine-tuning) and eval_samples >= 1, "
            f"got {list(train_samples)} and {list(eval_samples)}"
        )
    device = next(model.parameters()).device
    loader = DataLoader(test_data, batch_size=256, shuffle=False)
    reference = evaluate(model, loader, nn.CrossEntropyLoss(), device)
    scores: list[list[PSBScore]] = []
    for t in train_samples:
        net = to_psb(copy.deepcopy(model), samples=max(t, 1), **psb_options)
        if t:
            finetune_psb(
                net,
                train_data,
                t,
                epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                device=str(device),
            )
        scores.append([psb_accuracy(net, test_data, e, repeats, seed=seed) for e in eval_samples])
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    settings.update({k: v for k, v in psb_options.items() if k != "input_shape"})
    return SampleGrid(
        list(train_samples),
        list(eval_samples),
        scores,
        reference["top1"],
        reference["loss"],
        repeats,
        settings,
    )


def draw_sample_grid(grid: SampleGrid, ax: Any) -> None:
    """Draw top-1 vs eval-samples on matplotlib axes ``ax``: one line per train-samples
    (error bars: the standard deviation over repeats), the float model dashed."""
    for i, t in enumerate(grid.train_samples):
        ax.errorbar(
            grid.eval_samples,
            [c.top1 for c in grid.scores[i]],
            yerr=[c.top1_std for c in grid.scores[i]],
            marker="o",
            markersize=4,
            capsize=2,
            label=f"fine-tuned at {t} sample{'s' if t > 1 else ''}" if t else "not fine-tuned",
        )
    ax.axhline(grid.float_top1, color="k", linestyle="--", linewidth=1, label="float")
    ax.set_xscale("log", base=2)
    ax.set_xticks(grid.eval_samples, [str(e) for e in grid.eval_samples])
    ax.set_xlabel("weight samples at evaluation")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("progressive stochastic binarization: accuracy vs samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_sample_grid(grid: SampleGrid, path: str | Path) -> Path:
    """Draw the grid (:func:`draw_sample_grid`) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    draw_sample_grid(grid, ax)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
