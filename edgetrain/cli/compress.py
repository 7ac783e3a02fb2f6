"""``edgetrain compress``: prune a trained run with a recipe, then fine-tune; sensitivity."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgetrain.cli._common import (
    EXIT_INTERRUPTED,
    console,
    default_command_group,
    err_console,
    handle_errors,
    kib,
    parse_options,
    progress_bar,
    shipped_names,
    sigterm_as_interrupt,
)
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.compress.apply import CompressReport
    from edgetrain.compress.deploy import DeployedFile
    from edgetrain.compress.sensitivity import SensitivityRow

# What the options' help shows, without importing the library ("edgetrain compress --help"
# starts at once); a test keeps them equal to the library's.
DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

__all__ = ["app"]

app = typer.Typer(
    cls=default_command_group("run"),
    help="Prune a trained model's filters with a recipe (L1, physical removal), fine-tune it, "
    "and measure each layer's pruning sensitivity. 'edgetrain compress RUN_DIR ...' is short "
    "for 'edgetrain compress run RUN_DIR ...'.",
    epilog="Example: edgetrain compress runs/digits-resnet20 --recipe resnet20-l1",
    no_args_is_help=True,
    add_completion=False,
)


def _recipe_name(source: str) -> str:
    return Path(source).stem if source.endswith((".yaml", ".yml")) else Path(source).name


@app.command("run")
@handle_errors
def run_command(
    run_dir: Path = typer.Argument(..., help="Run directory (or checkpoint) of the trained model."),
    recipe: str = typer.Option(
        ...,
        help="Compression recipe: YAML path or shipped name "
        f"({', '.join(shipped_names('recipes/compress'))}).",
    ),
    set_: list[str] = typer.Option(
        None, "--set", "-s", help="Recipe parameter label.key=value, e.g. stage1.sparsity=0.5."
    ),
    out: Path = typer.Option(None, help="Output folder (default: runs/<run name>-<recipe name>)."),
    finetune_: bool = typer.Option(
        True, "--finetune/--no-finetune", help="Fine-tune as the recipe's finetune section says."
    ),
    prefer: str = typer.Option("best", help="Checkpoint of the run to start from: best or last."),
    data: str = typer.Option(
        None, help="Data set of a run trained from Python (its config.yaml names none)."
    ),
    data_option: list[str] = typer.Option(
        None, "--data-option", help="Option of --data, key=value (repeatable)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    progress: bool = typer.Option(True, help="Show a progress bar while fine-tuning."),
    report: bool = typer.Option(True, help="Write plots and report.html after fine-tuning."),
    bench: bool = typer.Option(
        False, help="Benchmark the exported files on ONNX Runtime (1 thread, 100 runs)."
    ),
) -> None:
    """Prune a trained run with a recipe, evaluate before and after, fine-tune, and
    export/quantize as the recipe's export and quantize sections say.

    Writes OUT/compress.json (the report), OUT/recipe.yaml and
    OUT/checkpoints/compressed.pt; with fine-tuning OUT is also a normal run directory.
    With an export or quantize section: OUT/model.onnx (and OUT/model.int8_static.onnx),
    each evaluated with ONNX Runtime on the test set.

    Example: edgetrain compress runs/digits-resnet20 --recipe resnet20-l1 --set stage1.sparsity=0.5
    """
    from edgetrain.compress.finetune import COMPRESSED_CHECKPOINT
    from edgetrain.compress.pipeline import REPORT_FILE, Compression, prepare_out
    from edgetrain.compress.pipeline import run as compress_run
    from edgetrain.compress.recipe import load_recipe
    from edgetrain.runs import load_trained_run

    parsed = load_recipe(recipe)
    if set_:
        parsed = parsed.with_params(parse_options(set_, "--set"))
    run = load_trained_run(run_dir, prefer=prefer, data=_data_section(data, data_option))
    out = prepare_out(out or Path("runs") / f"{run.config.name}-{_recipe_name(recipe)}", overwrite)

    def warn_ruined(job: Compression) -> None:
        if job.report.ruined and finetune_ and parsed.finetune and parsed.finetune.epochs:
            err_console.print(
                "[yellow]warning:[/] the pruned model is at chance level (ruined); such "
                "models rarely recover in fine-tuning"
            )

    try:
        with sigterm_as_interrupt():
            result = compress_run(
                run,
                parsed,
                out,
                finetune=finetune_,
                bench={} if bench else None,
                overwrite=overwrite,
                progress=progress,
                on_pruned=warn_ruined,
            )
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted[/]: the compression did not finish ({REPORT_FILE} is not "
            f"written) and '{out}' is not used as a compressed model; run it again with "
            "--overwrite"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    tuned = result.tuned
    _print_report(
        result.report, tuned.final_top1 if tuned else None, tuned.best_top1 if tuned else None
    )
    if result.files:
        _print_files(result.files)
    if tuned is not None and report:
        from edgetrain.report import build_report

        page = build_report([out])
        console.print(f"[green]run directory:[/] {out}   [green]report:[/] {page}")
    else:
        console.print(f"[green]compressed model:[/] {out / COMPRESSED_CHECKPOINT}")


def _data_section(name: str | None, options: list[str] | None) -> dict[str, object] | None:
    """``--data``/``--data-option`` as a recipe's data section (None without --data)."""
    if name is None:
        if options:
            raise ConfigError("--data-option goes with --data NAME")
        return None
    return {"name": name, "options": parse_options(options, "--data-option")}


def _print_report(
    result: CompressReport, final_top1: float | None, best_top1: float | None
) -> None:
    table = Table(title="pruned layers")
    for h in ("pruner", "method", "sparsity", "layers", "filters"):
        table.add_column(h, justify="left" if h in ("pruner", "method", "layers") else "right")
    for p in result.pruners:
        for g in p.groups:
            table.add_row(
                p.label,
                p.method,
                f"{p.sparsity:g}",
                ", ".join(g.layers),
                f"{g.before} -> {g.after}",
            )
    console.print(table)

    def pct(a: float, b: float) -> str:
        return f"{100 * (b / a - 1):+.1f}%" if a else "-"

    summary = Table(title="compression")
    for h in ("", "before", "after", "change"):
        summary.add_column(h, justify="left" if not h else "right")
    summary.add_row(
        "params",
        f"{result.params_before:,}",
        f"{result.params_after:,}",
        pct(result.params_before, result.params_after),
    )
    summary.add_row(
        "inference MACs",
        f"{result.macs_before:,}",
        f"{result.macs_after:,}",
        pct(result.macs_before, result.macs_after),
    )
    if result.top1_after is not None and result.top1_before is not None:
        flag = " [red](ruined)[/]" if result.ruined else ""
        summary.add_row(
            "test top-1 (no fine-tuning)",
            f"{result.top1_before:.2f}",
            f"{result.top1_after:.2f}{flag}",
            f"{result.top1_after - result.top1_before:+.2f}",
        )
    if final_top1 is not None and result.top1_before is not None:
        summary.add_row(
            "test top-1 after fine-tuning (last / best)",
            f"{result.top1_before:.2f}",
            f"{final_top1:.2f} / {best_top1:.2f}",
            f"{final_top1 - result.top1_before:+.2f}",
        )
    console.print(summary)


def _print_files(files: list[DeployedFile]) -> None:
    table = Table(title="deployed files (ONNX Runtime on the test set)")
    for h in ("file", "format", "KiB", "top-1 %", "latency ms"):
        table.add_column(h, justify="left" if h == "file" else "right")
    for f in files:
        table.add_row(
            str(f.path),
            f.name,
            kib(f.size_bytes),
            f"{f.top1:.2f}" if f.top1 is not None else "-",
            f"{f.latency_ms:.3f}" if f.latency_ms is not None else "-",
        )
    console.print(table)


def _parse_sparsities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise ConfigError(f"--sparsities '{text}' must be comma-separated numbers, e.g. 0.1,0.5")
    return values


@app.command("sensitivity")
@handle_errors
def sensitivity_command(
    run_dir: Path = typer.Argument(..., help="Run directory (or checkpoint) of the trained model."),
    layers: list[str] = typer.Option(
        None,
        "--layers",
        "-l",
        help="Layer pattern (name, glob or re:); each matched layer is pruned alone. Repeatable.",
    ),
    group: list[str] = typer.Option(
        None,
        "--group",
        "-g",
        help="Comma-separated patterns pruned together as one curve. Repeatable.",
    ),
    sparsities: str = typer.Option(
        ",".join(f"{s:g}" for s in DEFAULT_SPARSITIES), help="Fractions of filters removed."
    ),
    method: str = typer.Option("l1_filter", help="Pruning method."),
    out: Path = typer.Option(
        None, help="Folder for sensitivity.csv and sensitivity.png (default: RUN_DIR/sensitivity)."
    ),
    prefer: str = typer.Option("best", help="Checkpoint of the run: best or last."),
    metric: str = typer.Option(
        "accuracy",
        help="accuracy, or latency: also export and time every point on --runtime.",
    ),
    runtime: str = typer.Option("onnxruntime", help="Runtime of --metric latency."),
    runs: int = typer.Option(50, min=1, help="Timed runs per repeat (--metric latency)."),
    repeats: int = typer.Option(3, min=1, help="Repeats per point (--metric latency)."),
    threads: int = typer.Option(1, min=1, help="Runtime threads (--metric latency)."),
    recipe_out: Path = typer.Option(
        None,
        help="Also write a recipe grouped from the curves: each layer at the sparsity within "
        "--max-drop that is fastest (latency) or has the fewest MACs (accuracy).",
    ),
    max_drop: float = typer.Option(
        1.0, min=0.0, help="Top-1 points a layer may lose alone (--recipe-out)."
    ),
    min_gain: float = typer.Option(
        0.02,
        min=0.0,
        max=1.0,
        help="Fraction of the unpruned latency a layer's point must save to be pruned "
        "(--recipe-out with --metric latency; lower it for deep networks, where one layer "
        "is a small share).",
    ),
) -> None:
    """Prune each layer (or group) alone at several sparsities and evaluate without
    fine-tuning; writes a CSV and a plot. Without --layers/--group: every prunable layer.
    With --metric latency every point is also timed on a runtime, and --recipe-out
    turns the curves into a recipe.

    Example: edgetrain compress sensitivity runs/digits-resnet20 --layers 'layer1.*.conv1'

    Example: edgetrain compress sensitivity runs/digits-resnet20 --metric latency \
    --recipe-out auto.yaml --max-drop 1
    """
    from edgetrain.report.sensitivity import plot_sensitivity
    from edgetrain.runs import load_trained_run

    if metric not in ("accuracy", "latency"):
        raise ConfigError(f"--metric must be accuracy or latency, got '{metric}'")
    levels = _parse_sparsities(sparsities)
    from edgetrain.compress.runtime import RUNTIMES
    from edgetrain.compress.sensitivity import (
        LatencyProbe,
        recipe_from_sensitivity,
        sensitivity,
        write_recipe,
        write_sensitivity_csv,
    )

    probe = None
    if metric == "latency":
        RUNTIMES.entry(runtime)  # an unknown runtime: one line, before any work
        probe = LatencyProbe(runtime, threads=threads, runs=runs, repeats=repeats)
    run = load_trained_run(run_dir, prefer=prefer)
    targets: list[str | list[str]] = [*(layers or [])]
    targets += [[p.strip() for p in g.split(",") if p.strip()] for g in group or []]
    with progress_bar("sensitivity points") as advance:
        rows = sensitivity(
            run.model,
            run.test_data(),
            targets or None,
            levels,
            method=method,
            latency=probe,
            progress=advance,
        )
    folder = out or (run.run_dir / "sensitivity")
    csv_path = write_sensitivity_csv(rows, folder / "sensitivity.csv")
    png_path = plot_sensitivity(rows, folder / "sensitivity.png")
    _print_sensitivity(rows)
    console.print(f"[green]written:[/] {csv_path}, {png_path}")
    if recipe_out is not None:
        recipe = recipe_from_sensitivity(
            rows,
            max_drop=max_drop,
            metric="latency" if probe else "macs",
            min_gain=min_gain,
            method=method,
        )
        if not recipe["pruners"]:
            console.print(
                f"[yellow]no recipe written:[/] no target kept its top-1 within {max_drop:g} "
                "points at a point that "
                + (f"saves {min_gain:.1%} of the latency" if probe else "saves MACs")
                + "; raise --max-drop"
                + (" or lower --min-gain" if probe else ""),
                highlight=False,
                soft_wrap=True,
            )
            return
        header = (
            f"Grouped from the pruning sensitivity of {run_dir} (each layer pruned alone, no "
            f"fine-tuning): every layer at the sparsity whose top-1 stays within {max_drop:g} "
            "points and that is "
            + (
                f"fastest on {runtime} and at least {min_gain:.1%} faster than unpruned"
                if probe
                else "cheapest in MACs"
            )
            + ".\nLayers left out did not pay. Chosen points:"
        )
        path = write_recipe(recipe, recipe_out, header)
        console.print(
            f"[green]recipe:[/] {path} ({len(recipe['pruners'])} pruners, "
            f"{len(recipe['chosen'])} of {len({r.target for r in rows})} targets pruned); "
            f"apply it with: edgetrain compress {run_dir} --recipe {path}",
            highlight=False,
            soft_wrap=True,
        )


def _print_sensitivity(rows: list[SensitivityRow]) -> None:
    levels = sorted({r.sparsity for r in rows})
    table = Table(title="test top-1 (%) without fine-tuning, by fraction of filters removed")
    table.add_column("target")
    table.add_column("filters", justify="right")
    for s in levels:
        table.add_column(f"{s:g}", justify="right")
    curves: dict[str, dict[float, SensitivityRow]] = {}
    for r in rows:
        curves.setdefault(r.target, {})[r.sparsity] = r
    for target, points in curves.items():
        first = next(iter(points.values()))
        cells = [f"{points[s].top1:.1f}" if s in points else "-" for s in levels]
        table.add_row(target, str(first.filters_before), *cells)
    console.print(table)
    if all(r.latency_ms is not None for r in rows):
        timed = Table(
            title="latency relative to the unpruned model, by fraction of filters removed"
        )
        timed.add_column("target")
        for s in levels:
            timed.add_column(f"{s:g}", justify="right")
        for target, points in curves.items():
            base = points[0.0].latency_ms if 0.0 in points else None
            cells = [
                f"{points[s].latency_ms / base:.3f}"  # type: ignore[operator]
                if s in points and base
                else "-"
                for s in levels
            ]
            timed.add_row(target, *cells)
        console.print(timed)
