"""Reports regenerated from run directories alone: plots (PNG) and one HTML page.

Example:
    >>> from edgetrain.report import build_report
    >>> build_report(["runs/digits-pretrain"])  # doctest: +SKIP
    PosixPath('runs/digits-pretrain/report.html')
"""

from __future__ import annotations

import os
from pathlib import Path

from edgetrain.engine.rundir import atomic_write_text
from edgetrain.report.extract import RunRecord, load_run, load_runs, series
from edgetrain.report.html import render_html, summary_rows
from edgetrain.report.plots import plot_curves
from edgetrain.report.sections import REPORT_SECTIONS, sections

__all__ = [
    "REPORT_SECTIONS",
    "RunRecord",
    "build_report",
    "load_run",
    "load_runs",
    "plot_curves",
    "render_html",
    "series",
    "summary_rows",
]


def build_report(
    run_dirs: list[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    title: str | None = None,
    similarity: bool = False,
    baselines: list[str] | None = None,
    scenario: bool = False,
) -> Path:
    """Regenerate plots and the HTML report of one or several runs.

    Args:
        run_dirs: run directories written by the Trainer.
        out: HTML path. Default: ``<run>/report.html`` for one run, ``report.html`` in
            the runs' common parent folder for several (the current folder when they
            share none).
        title: page title (default from the run names).
        similarity: add the per-layer distance/angle heat maps between the runs (they
            need weight snapshots) and write ``<page>_similarity.csv`` beside the page.
        baselines: with ``similarity``, also draw UMAP training paths fitted on these runs
            (names as in the report; needs the ``[analysis]`` extra).
        scenario: add the operations-aware comparison (accuracy vs cumulative MACs,
            best-so-far, epochs-to-target vs ops saved), the first run as reference, and
            write ``<page>_scenario.csv``. Conventional runs at N and N+1 frozen layers
            (e.g. ``4444`` and ``4440``) are drawn as dashed reference lines.

    Returns:
        The path of the HTML page. Each run's own curves go to ``<run>/plots/`` (with
        ``channels.png`` and ``pruning.png`` for runs whose architecture changed,
        ``patterns.png`` and ``patterns_entropy.png`` for runs with pattern measurements,
        ``lr_sensitivity.png``, ``lr_transition.png`` and ``actcool.png`` for runs with
        learning-rate diagnostics);
        overlays of several runs go to ``<out stem>_plots/`` beside the page.
    """
    runs = load_runs(list(run_dirs))
    for run in runs:
        for section in sections():
            if section.applies(run):
                section.plot([run], run.path / "plots")
    if len(runs) == 1:
        page = Path(out) if out else runs[0].path / "report.html"
        images = sorted((runs[0].path / "plots").glob("*.png"))
    else:
        parent = Path(os.path.commonpath([str(r.path.resolve()) for r in runs]))
        if parent == Path(parent.anchor):  # unrelated folders: do not write to /
            parent = Path.cwd()
        page = Path(out) if out else parent / "report.html"
        images = []
        for section in sections():
            drawn = section.overlaid(runs)
            if drawn:
                images += section.plot(drawn, page.with_name(f"{page.stem}_plots"))
    if similarity:
        from edgetrain.analysis import similarity as compare_runs
        from edgetrain.report.similarity import plot_similarity

        result = compare_runs([r.path for r in runs], [r.name for r in runs])
        folder = page.with_name(f"{page.stem}_plots")
        images = [*images, *plot_similarity(result, folder)]
        atomic_write_text(page.with_name(f"{page.stem}_similarity.csv"), result.to_csv())
        if baselines:
            from edgetrain.analysis import trajectories
            from edgetrain.report.similarity import plot_trajectories

            points = trajectories([r.path for r in runs], baselines, names=[r.name for r in runs])
            images.append(plot_trajectories(points, folder))
    if scenario:
        from edgetrain.report.scenario import plot_scenario, run_ops

        ops = run_ops(runs)
        images.append(plot_scenario(runs, ops, page.with_name(f"{page.stem}_plots")))
        lines = ["run,step_macs,relative_ops,epochs_to_target,macs_to_target"]
        lines += [
            f"{o.name},{o.step_macs:.0f},{o.relative_ops:.4f},"
            f"{'' if o.epochs_to_target is None else o.epochs_to_target},"
            f"{'' if o.macs_to_target is None else f'{o.macs_to_target:.0f}'}"
            for o in ops
        ]
        atomic_write_text(page.with_name(f"{page.stem}_scenario.csv"), "\n".join(lines) + "\n")
    name = title or ("edgetrain report: " + ", ".join(r.name for r in runs))
    atomic_write_text(page, render_html(runs, images, name))
    return page
