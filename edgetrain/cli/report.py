"""``edgetrain report``: plots and an HTML page regenerated from run directories."""

from __future__ import annotations

from pathlib import Path

import typer

from edgetrain._atomic import writable_folder
from edgetrain.cli._common import console, handle_errors


@handle_errors
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write."),
    title: str = typer.Option(None, help="Page title."),
    similarity: bool = typer.Option(
        False, help="Add per-layer distance/angle heat maps (runs with weight snapshots)."
    ),
    baseline: list[str] = typer.Option(
        None, help="With --similarity: run names to fit UMAP training paths on (repeatable)."
    ),
    scenario: bool = typer.Option(
        False,
        help="Add accuracy vs cumulative MACs, best-so-far and ops-to-target (the "
        "first run is the reference; conventional runs at N and N+1 frozen layers are "
        "drawn as dashed reference lines).",
    ),
) -> None:
    """Regenerate plots and a self-contained HTML report from run directories.

    Example: edgetrain report runs/digits-pretrain runs/digits-finetune --out runs/report.html
    """
    from edgetrain.report import build_report

    if out is not None:
        writable_folder(out.parent, "the folder of --out")
    page = build_report(
        list(run_dirs), out, title, similarity, list(baseline or []) or None, scenario
    )
    console.print(f"[green]report:[/] {page}")
