"""``edgetrain train``: train from a recipe, or resume an interrupted run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edgetrain.cli._common import (
    EXIT_INTERRUPTED,
    console,
    err_console,
    fail,
    handle_errors,
    sigterm_as_interrupt,
)
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.runs import RunConfig, RunResult


def print_runs(run_dirs: list[Path]) -> None:
    """A rich table of finished runs (status, best and final accuracy, time)."""
    from rich.table import Table

    from edgetrain.report import load_run
    from edgetrain.report.html import SUMMARY_HEADER, summary_rows

    table = Table(title="runs")
    for h in SUMMARY_HEADER:
        table.add_column(h, justify="left" if h in ("run", "status") else "right")
    for row in summary_rows([load_run(p) for p in run_dirs]):
        table.add_row(
            *[
                f"{c:.2f}" if isinstance(c, float) else f"{c:,}" if isinstance(c, int) else str(c)
                for c in row
            ]
        )
    console.print(table)


@handle_errors
def train_command(
    config: str = typer.Argument(
        None, help="YAML recipe (path, or name of a shipped recipe); omit with --resume."
    ),
    set_: list[str] = typer.Option(
        None, "--set", "-s", help="Override a config value: key.sub=value (repeatable)."
    ),
    epochs: int = typer.Option(None, min=1, help="Number of epochs (overrides the recipe)."),
    seed: int = typer.Option(None, help="Random seed."),
    name: str = typer.Option(None, help="Run name (the folder under --runs-dir)."),
    device: str = typer.Option(None, help="auto, cpu, cuda, cuda:1 ..."),
    precision: str = typer.Option(
        None, help="32, 16-mixed or bf16-mixed (autocast, FP32 master weights)."
    ),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    resume: Path = typer.Option(
        None, help="Continue the interrupted run in this directory from its last epoch."
    ),
    full: bool = typer.Option(
        False, help="Apply the recipe's 'full:' section (longer run, more data)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
) -> None:
    """Train a model from a YAML recipe into runs/<name>/ (or resume a run).

    Example: edgetrain train recipes/digits-pretrain.yaml --set optimizer.lr=0.01 --epochs 5
    """
    from edgetrain.runs import load_config, resume_run

    if resume is not None:
        given = [
            flag
            for flag, value in (
                ("CONFIG", config),
                ("--set", set_),
                ("--seed", seed),
                ("--name", name),
                ("--device", device),
                ("--precision", precision),
                ("--full", full),
            )
            if value
        ]
        if given:
            raise ConfigError(
                f"--resume continues a run with its own config.yaml; drop {', '.join(given)}"
            )
        run = functools.partial(resume_run, resume, epochs=epochs, progress=progress)
        finish(run, resume, report)
        return
    if config is None:
        raise ConfigError("pass a recipe (e.g. recipes/digits-pretrain.yaml) or --resume")
    cfg = load_config(
        config,
        [*(set_ or []), *([f"precision={precision}"] if precision else [])],
        full=full,
        epochs=epochs,
        seed=seed,
        name=name,
        device=device,
    )
    run_and_report(cfg, runs_dir, overwrite, progress, report)


def run_and_report(
    config: RunConfig, runs_dir: Path, overwrite: bool, progress: bool, report: bool
) -> None:
    """Start a run, then print its table and write its report (on rank 0)."""
    from edgetrain.runs import start_run

    run = functools.partial(start_run, config, runs_dir, overwrite=overwrite, progress=progress)
    finish(run, runs_dir / config.name, report)


def finish(run: Callable[[], RunResult], target: Path, report: bool) -> None:
    """Run with SIGTERM treated as Ctrl-C; print the result table and write the report."""
    from edgetrain.report import build_report

    try:
        with sigterm_as_interrupt():
            result = run()
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted[/]: finished epochs are kept; continue with "
            f"'edgetrain train --resume {target}'"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not result.is_main:  # under torchrun, rank 0 reports
        return
    if result.summary.get("status") not in ("completed", "stopped"):
        raise fail(f"run ended with status {result.summary.get('status')}", code=1)
    print_runs([result.run_dir.path])
    if report:
        page = build_report([result.run_dir.path])
        console.print(f"[green]run directory:[/] {result.run_dir.path}   [green]report:[/] {page}")
