"""Plots of learning-rate sensitivity and temperature control (ActCooLR,
``specs/diagnostics.md`` section 2).

Reads what the diagnostics callbacks wrote into a run directory and draws:

- ``lr_sensitivity.png``: heat map of the AP distance ``D`` over time (x, epochs) and
  learning rate (y, log scale), the rate the run used drawn as a line;
- ``lr_transition.png``: the fitted transition's ``mu(t)`` (beside ``ln`` of the rate
  used) and ``sigma(t)``, divergence warnings marked;
- ``actcool.png``: ActCoolLR's learning rate per step, and the target against the
  measured temperature.

Data first (:func:`sensitivity_grid`, plain arrays, easy to test), drawing second.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgetrain.diagnostics.actcool import ACTCOOL_FILE, read_actcool  # noqa: E402
from edgetrain.diagnostics.lr_sensitivity import (  # noqa: E402
    LR_SENSITIVITY_FILE,
    SensitivityMeasurement,
    read_lr_sensitivity,
)

__all__ = [
    "SensitivityGrid",
    "has_lr_diagnostics",
    "plot_actcool",
    "plot_lr_diagnostics",
    "plot_lr_sensitivity",
    "sensitivity_grid",
]


@dataclass(frozen=True)
class SensitivityGrid:
    """The measurements of one run as arrays.

    Attributes:
        epochs: time of each measurement (epochs), shape ``(M,)``.
        rates: the probed rates (those of the first measurement), shape ``(R,)``.
        distance: network-level ``D``, shape ``(R, M)`` (NaN where a rate is missing).
        lr: the rate the run used at each time (NaN when unknown).
        mu, sigma: the log-normal fit per time (NaN when not fittable).
        warnings: the sigma-rise divergence warning per time.
    """

    epochs: np.ndarray
    rates: np.ndarray
    distance: np.ndarray
    lr: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    warnings: np.ndarray


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def sensitivity_grid(measurements: list[SensitivityMeasurement]) -> SensitivityGrid:
    """Stack measurements (all on the first one's rates) into a :class:`SensitivityGrid`."""
    if not measurements:
        raise ValueError("no learning-rate sensitivity measurements to plot")
    rates = np.asarray(measurements[0].rates, dtype=np.float64)
    distance = np.full((len(rates), len(measurements)), np.nan)
    for j, m in enumerate(measurements):
        by_rate = dict(zip(m.rates, m.distance, strict=True))
        distance[:, j] = [by_rate.get(float(r), np.nan) for r in rates]
    return SensitivityGrid(
        epochs=np.asarray([m.epoch for m in measurements], dtype=np.float64),
        rates=rates,
        distance=distance,
        lr=np.asarray([_nan(m.lr) for m in measurements]),
        mu=np.asarray([_nan(m.mu) for m in measurements]),
        sigma=np.asarray([_nan(m.sigma) for m in measurements]),
        warnings=np.asarray([m.divergence_warning for m in measurements], dtype=bool),
    )


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (midpoints; a unit-wide cell for one centre)."""
    if len(centres) == 1:
        return np.asarray([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def plot_lr_sensitivity(
    measurements: list[SensitivityMeasurement], out_dir: str | os.PathLike[str], title: str = ""
) -> list[Path]:
    """Draw ``lr_sensitivity.png`` (heat map) and ``lr_transition.png`` (mu, sigma)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = sensitivity_grid(measurements)
    log_rates = np.log10(grid.rates)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    mesh = ax.pcolormesh(
        _edges(grid.epochs), _edges(log_rates), grid.distance, cmap="magma", vmin=0, vmax=1
    )
    if np.isfinite(grid.lr).any():
        ax.plot(grid.epochs, np.log10(grid.lr), color="cyan", marker=".", label="LR used")
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_ylabel("log10 learning rate")
    ax.set_title(f"{title}: AP distance of one step" if title else "AP distance of one step")
    fig.colorbar(mesh, ax=ax, fraction=0.05, label="D (share of patterns changed)")
    fig.tight_layout()
    heat = out / "lr_sensitivity.png"
    fig.savefig(heat)
    plt.close(fig)

    fig, (ax_mu, ax_sigma) = plt.subplots(1, 2, figsize=(10.0, 3.6), dpi=110)
    ax_mu.plot(grid.epochs, grid.mu, marker="o", label="mu (D = 1/2 at e^mu)")
    if np.isfinite(grid.lr).any():
        ax_mu.plot(grid.epochs, np.log(grid.lr), ls="--", marker=".", label="ln(LR used)")
    ax_mu.set_title("mu(t)")
    ax_mu.legend(fontsize="small")
    ax_sigma.plot(grid.epochs, grid.sigma, marker="o", color="tab:orange")
    if grid.warnings.any():
        ax_sigma.scatter(
            grid.epochs[grid.warnings],
            grid.sigma[grid.warnings],
            s=80,
            facecolors="none",
            edgecolors="red",
            label="divergence warning",
        )
        ax_sigma.legend(fontsize="small")
    ax_sigma.set_title("sigma(t) (transition width, ln units)")
    for ax in (ax_mu, ax_sigma):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    transition = out / "lr_transition.png"
    fig.savefig(transition)
    plt.close(fig)
    return [heat, transition]


def plot_actcool(
    run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], title: str = ""
) -> Path | None:
    """Draw ``actcool.png`` from a run's ``actcool.jsonl`` (None when it has no rows)."""
    rows = read_actcool(run_dir)
    if not rows:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_lr, ax_t) = plt.subplots(2, 1, figsize=(8.0, 5.6), dpi=110, sharex=True)
    steps = [r["step"] for r in rows]
    ax_lr.plot(steps, [r["lr"] for r in rows], lw=1.0)
    refits = [r for r in rows if r.get("refit")]
    if refits:
        ax_lr.scatter(
            [r["step"] for r in refits],
            [r["lr"] for r in refits],
            color="red",
            s=12,
            label="re-fit",
        )
        ax_lr.legend(fontsize="small")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title(f"{title}: ActCoolLR" if title else "ActCoolLR")
    ax_t.plot(steps, [r["t_target"] for r in rows], label="target T", color="black")
    probed = [r for r in rows if r.get("t_measured") is not None]
    ax_t.scatter(
        [r["step"] for r in probed],
        [r["t_measured"] for r in probed],
        s=6,
        alpha=0.6,
        label="measured T",
    )
    ax_t.set_xlabel("step")
    ax_t.set_ylabel("temperature")
    ax_t.legend(fontsize="small")
    for ax in (ax_lr, ax_t):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "actcool.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def has_lr_diagnostics(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the run wrote LR-sensitivity measurements or ActCoolLR rows."""
    path = Path(run_dir)
    return (path / LR_SENSITIVITY_FILE).is_file() or (path / ACTCOOL_FILE).is_file()


def plot_lr_diagnostics(
    run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], title: str = ""
) -> list[Path]:
    """All plots of this module a run has data for."""
    written: list[Path] = []
    measurements = read_lr_sensitivity(run_dir)
    if measurements:
        written += plot_lr_sensitivity(measurements, out_dir, title)
    actcool = plot_actcool(run_dir, out_dir, title)
    if actcool is not None:
        written.append(actcool)
    return written
