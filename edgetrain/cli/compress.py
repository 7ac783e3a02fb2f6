"""``edgetrain compress``: prune a trained run with a recipe, then fine-tune; sensitivity."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import typer
import yaml
from rich.table import Table

from edgetrain.cli._common import (
    EXIT_INTERRUPTED,
    console,
    default_command_group,
    err_console,
    handle_errors,
    kib,
    parse_options,
    sigterm_as_interrupt,
)
from edgetrain.compress.apply import CompressReport, apply
from edgetrain.compress.deploy import DeployedFile, deploy, measure
from edgetrain.compress.finetune import COMPRESSED_CHECKPOINT, finetune, save_compressed
from edgetrain.compress.recipe import list_shipped_recipes, load_recipe
from edgetrain.compress.sensitivity import (
    DEFAULT_SPARSITIES,
    SensitivityRow,
    sensitivity,
    write_sensitivity_csv,
)
from edgetrain.compress.source import evaluate_model, load_trained_run
from edgetrain.engine.rundir import atomic_write_text
from edgetrain.errors import ConfigError

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

REPORT_FILE = "compress.json"


def _recipe_name(source: str) -> str:
    return Path(source).stem if source.endswith((".yaml", ".yml")) else Path(source).name


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder '{out}' exists; pass --overwrite or another --out")


@app.command("run")
@handle_errors
def run_command(
    run_dir: Path = typer.Argument(..., help="Run directory (or checkpoint) of the trained model."),
    recipe: str = typer.Option(
        ...,
        help="Compression recipe: YAML path or shipped name "
        f"({', '.join(list_shipped_recipes())}).",
    ),
    set_: list[str] = typer.Option(
        None, "--set", "-s", help="Recipe parameter label.key=value, e.g. stage1.sparsity=0.5."
    ),
    out: Path = typer.Option(None, help="Output folder (default: runs/<run name>-<recipe name>)."),
    finetune_: bool = typer.Option(
        True, "--finetune/--no-finetune", help="Fine-tune as the recipe's finetune section says."
    ),
    prefer: str = typer.Option("best", help="Checkpoint of the run to start from: best or last."),
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
    parsed = load_recipe(recipe)
    if set_:
        parsed = parsed.with_params(parse_options(set_, "--set"))
    run = load_trained_run(run_dir, prefer=prefer)
    out = out or Path("runs") / f"{run.config.name}-{_recipe_name(recipe)}"
    _prepare_out(out, overwrite)
    # apply() checks the recipe against the model first: bad input fails before any output.
    model, result = apply(copy.deepcopy(run.model), parsed)
    test = run.test_data()
    before, after = evaluate_model(run.model, test), evaluate_model(model, test)
    result.top1_before = before["top1"]
    result.mark_ruined(after["top1"], test.info.num_classes)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    atomic_write_text(out / "recipe.yaml", yaml.safe_dump(parsed.to_dict(), sort_keys=False))
    tuned = None
    settings = parsed.finetune
    if finetune_ and settings is not None and settings.epochs > 0:
        if result.ruined:
            err_console.print(
                "[yellow]warning:[/] the pruned model is at chance level (ruined); such "
                "models rarely recover in fine-tuning"
            )
        try:
            with sigterm_as_interrupt():
                tuned = finetune(
                    model,
                    settings,
                    run.config,
                    architecture=run.architecture,
                    run_dir=out,
                    name=out.name,
                    progress=progress,
                )
        except KeyboardInterrupt:
            err_console.print(
                f"[yellow]interrupted[/]: finished fine-tuning epochs are kept; continue with "
                f"'edgetrain train --resume {out}' ({REPORT_FILE} is not written)"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    else:
        save_compressed(model, out / COMPRESSED_CHECKPOINT, run.architecture)
    files: list[DeployedFile] = []
    if parsed.export is not None or parsed.quantize is not None:
        final = tuned.model if tuned is not None else model
        files = deploy(final, parsed, out, test, run.train_data())
        if bench:
            measure(files)
    record = {
        "source": str(run.checkpoint),
        "recipe": parsed.to_dict(),
        **result.to_dict(),
        "loss_before": before["loss"],
        "loss_after": after["loss"],
        "finetune": None
        if tuned is None
        else {
            "epochs": len(tuned.history),
            "final_top1": tuned.final_top1,
            "best_top1": tuned.best_top1,
        },
        "deployed": [f.to_dict() for f in files],
    }
    # Written last: its presence says the compression finished.
    atomic_write_text(out / REPORT_FILE, json.dumps(record, indent=2) + "\n")
    _print_report(result, tuned.final_top1 if tuned else None, tuned.best_top1 if tuned else None)
    if files:
        _print_files(files)
    if tuned is not None and report:
        from edgetrain.report import build_report

        page = build_report([out])
        console.print(f"[green]run directory:[/] {out}   [green]report:[/] {page}")
    else:
        console.print(f"[green]compressed model:[/] {out / COMPRESSED_CHECKPOINT}")


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
) -> None:
    """Prune each layer (or group) alone at several sparsities and evaluate without
    fine-tuning; writes a CSV and a plot. Without --layers/--group: every prunable layer.

    Example: edgetrain compress sensitivity runs/digits-resnet20 --layers 'layer1.*.conv1'
    """
    from edgetrain.report.sensitivity import plot_sensitivity

    levels = _parse_sparsities(sparsities)
    run = load_trained_run(run_dir, prefer=prefer)
    targets: list[str | list[str]] = [*(layers or [])]
    targets += [[p.strip() for p in g.split(",") if p.strip()] for g in group or []]
    rows = sensitivity(run.model, run.test_data(), targets or None, levels, method=method)
    folder = out or (run.run_dir / "sensitivity")
    csv_path = write_sensitivity_csv(rows, folder / "sensitivity.csv")
    png_path = plot_sensitivity(rows, folder / "sensitivity.png")
    _print_sensitivity(rows)
    console.print(f"[green]written:[/] {csv_path}, {png_path}")


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
