"""``edgetrain diagnose``: watch what training does to a network's discrete decisions."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edgetrain.cli._common import console, err_console, handle_errors
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.runs import RunConfig

__all__ = [
    "app",
    "lr_sensitivity_command",
    "patterns_command",
    "print_lr_sensitivity",
    "print_pattern_summary",
]

app = typer.Typer(
    help="Training diagnostics: activation patterns (patterns), learning-rate sensitivity "
    "(lr-sensitivity).",
    epilog="Example: edgetrain diagnose patterns --config digits-pretrain --epochs 2",
    no_args_is_help=True,
    add_completion=False,
)

# What the options' help shows, without importing the library (the help starts at once);
# a test keeps it equal to the library's.
DEFAULT_BUCKETS = 2**20
_MODES = ("auto", "hash", "exact")


@app.command("patterns")
@handle_errors
def patterns_command(
    config: str = typer.Option(..., help="Recipe (path or shipped name) to train."),
    every: int = typer.Option(10, min=1, help="Steps between measurements early in training."),
    early_steps: int = typer.Option(
        100, min=0, help="Measure every --every steps up to this step, then --per-epoch."
    ),
    per_epoch: int = typer.Option(2, min=1, help="Measurements per epoch after --early-steps."),
    subset: int = typer.Option(
        None, min=1, help="Measure on this many training samples (fixed); default all."
    ),
    mode: str = typer.Option("auto", help="auto (exact up to 64 channels), hash or exact."),
    buckets: int = typer.Option(DEFAULT_BUCKETS, min=1, help="Hash buckets per layer."),
    layer: list[str] = typer.Option(
        None, "--layer", help="Record only this activation layer (repeatable); default all."
    ),
    batch_size: int = typer.Option(256, min=1, help="Batch size of a measurement."),
    final_counts: Path = typer.Option(
        None,
        help="patterns_final.pt (or run directory) of a first pass with the same seed: "
        "adds the Jaccard index to the final state.",
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Number of epochs."),
    seed: int = typer.Option(None, help="Random seed."),
    name: str = typer.Option(None, help="Run name (default: <recipe name>-patterns)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
) -> None:
    """Train a recipe while measuring the activation patterns of its training set
    (patterns.jsonl in the run directory), then print a per-layer summary.

    Two passes give the Jaccard index to the final state: train once, then rerun with
    --final-counts runs/<first>/patterns_final.pt and the same seed.

    Example: edgetrain diagnose patterns --config digits-pretrain --epochs 2 --subset 512
    """
    from edgetrain.cli.train import run_and_report
    from edgetrain.diagnostics import OccupancyWarning

    if mode not in _MODES:
        raise ConfigError(f"--mode '{mode}' is not one of: {', '.join(_MODES)}")
    if final_counts is not None and not final_counts.exists():
        raise ConfigError(
            f"--final-counts '{final_counts}' not found; pass the patterns_final.pt of a "
            "first pass (or its run directory)"
        )
    monitor: dict[str, Any] = {
        "name": "ap-monitor",
        "every": every,
        "early_steps": early_steps,
        "per_epoch": per_epoch,
        "subset": subset,
        "batch_size": batch_size,
        "mode": mode,
        "buckets": buckets,
        "layers": list(layer) if layer else None,
        "final_counts": None if final_counts is None else str(final_counts),
    }
    cfg = _recipe_with(monitor, config, set_, epochs, seed, name, "patterns")
    with warnings.catch_warnings():
        # Full bucket tables are named once, under the summary table.
        warnings.simplefilter("ignore", OccupancyWarning)
        run_and_report(cfg, runs_dir, overwrite, progress, report)
    print_pattern_summary(runs_dir / cfg.name)


def _recipe_with(
    callback: dict[str, Any],
    config: str,
    overrides: list[str] | None,
    epochs: int | None,
    seed: int | None,
    name: str | None,
    suffix: str,
) -> RunConfig:
    """The recipe ``config`` with ``callback`` last among its callbacks (replacing one of
    the same name), run under ``name`` (default: ``<recipe name>-<suffix>``)."""
    from edgetrain.runs import load_config

    base = load_config(config, list(overrides or []), epochs=epochs, seed=seed)
    tree = base.to_dict()
    tree["name"] = name or f"{base.name}-{suffix}"
    tree["callbacks"] = [c for c in tree["callbacks"] if c.get("name") != callback["name"]]
    tree["callbacks"].append(callback)
    return load_config(tree)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_pattern_summary(run_dir: Path) -> None:
    """A per-layer table of the first and last measurement of a run's patterns.jsonl."""
    from rich.table import Table

    from edgetrain.diagnostics import OCCUPANCY_WARNING, read_pattern_records

    records = read_pattern_records(run_dir)
    if not records:
        return
    first, last = records[0], records[-1]
    crowded: list[str] = []
    table = Table(
        title=f"activation patterns: {len(records)} measurements, steps "
        f"{first['step']}-{last['step']}, {last['samples']} samples each"
    )
    header = [
        "layer",
        "channels",
        "mode",
        "distinct (init)",
        "distinct (last)",
        "J to init",
        "J to prev",
        "J to final",
        "top share",
        "entropy",
        "rel. entropy",
        "max occupancy",
    ]
    for h in header:
        table.add_column(h, justify="left" if h == "layer" else "right")
    for name, m in last["layers"].items():
        start = first["layers"].get(name, {})
        shares = [r["layers"][name]["occupancy"] for r in records if name in r["layers"]]
        shares = [s for s in shares if s is not None]
        if shares and max(shares) > OCCUPANCY_WARNING:
            crowded.append(name)
        table.add_row(
            name,
            str(m["channels"]),
            "exact" if m["exact"] else "hash",
            _fmt(start.get("distinct"), ","),
            _fmt(m["distinct"], ","),
            _fmt(m["jaccard_init"], ".3f"),
            _fmt(m["jaccard_prev"], ".3f"),
            _fmt(m["jaccard_final"], ".3f"),
            _fmt(m["top_share"], ".3f"),
            _fmt(m["entropy"], ".2f"),
            _fmt(m["relative_entropy"], ".3f"),
            _fmt(max(shares) if shares else None, ".2%"),
        )
    console.print(table)
    if crowded:
        err_console.print(
            f"[yellow]warning:[/] more than {OCCUPANCY_WARNING:.0%} of the buckets in use in "
            f"{', '.join(crowded)}: hash collisions distort those counts; raise --buckets",
            highlight=False,
        )


@app.command("lr-sensitivity")
@handle_errors
def lr_sensitivity_command(
    config: str = typer.Option(..., help="Recipe (path or shipped name) to train."),
    rates: int = typer.Option(50, help="Learning rates probed per measurement."),
    low: float = typer.Option(1e-4, help="Smallest probed learning rate."),
    high: float = typer.Option(1e2, help="Largest probed learning rate."),
    every_epoch: bool = typer.Option(
        True, help="Measure at the first step of every epoch (the first is the initialisation)."
    ),
    at: list[int] = typer.Option(
        None, "--at", help="Also measure before this global step (repeatable; 0 = init)."
    ),
    sigma_rise: float = typer.Option(
        2.0, help="Warn of divergence when sigma grows by more than this factor."
    ),
    layer: list[str] = typer.Option(
        None, "--layer", help="Use only this activation layer (repeatable); default all."
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Number of epochs."),
    seed: int = typer.Option(None, help="Random seed."),
    name: str = typer.Option(None, help="Run name (default: <recipe name>-lrsens)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
) -> None:
    """Train a recipe while probing one step at many learning rates at chosen times
    (lr_sensitivity.jsonl in the run directory); print the fitted transition per time.

    The run itself is unchanged by the probes (each is undone exactly).

    Example: edgetrain diagnose lr-sensitivity --config digits-pretrain --epochs 3 --at 50
    """
    from edgetrain.cli.train import run_and_report

    probe: dict[str, Any] = {
        "name": "lr-sensitivity",
        "rates": rates,
        "low": low,
        "high": high,
        "every_epoch": every_epoch,
        "at_steps": list(at or []),
        "sigma_rise": sigma_rise,
        "layers": list(layer) if layer else None,
    }
    # Last of the callbacks: it probes the gradient the others have finished with.
    cfg = _recipe_with(probe, config, set_, epochs, seed, name, "lrsens")
    run_and_report(cfg, runs_dir, overwrite, progress, report)
    print_lr_sensitivity(runs_dir / cfg.name)


def print_lr_sensitivity(run_dir: Path) -> None:
    """A table of a run's LR-sensitivity measurements: mu, sigma and fit errors per time."""
    from rich.table import Table

    from edgetrain.diagnostics import read_lr_sensitivity

    measurements = read_lr_sensitivity(run_dir)
    if not measurements:
        return
    table = Table(title=f"learning-rate sensitivity: {len(measurements[0].rates)} rates per time")
    header = ["epoch", "step", "lr used", "mu", "sigma", "e^mu", "RMSE erf"]
    header += ["RMSE erf-power", "RMSE arctan-power", "warning"]
    for h in header:
        table.add_column(h, justify="right")
    for m in measurements:
        rmse = {k: None if f is None else f.rmse for k, f in m.fits.items()}
        table.add_row(
            f"{m.epoch:.2f}",
            str(m.step),
            _fmt(m.lr, ".3g"),
            _fmt(m.mu, ".3f"),
            _fmt(m.sigma, ".3f"),
            _fmt(None if m.mu is None else math.exp(m.mu), ".3g"),
            _fmt(rmse.get("erf"), ".4f"),
            _fmt(rmse.get("erf-power"), ".4f"),
            _fmt(rmse.get("arctan-power"), ".4f"),
            "sigma rise" if m.divergence_warning else "",
        )
    console.print(table)
