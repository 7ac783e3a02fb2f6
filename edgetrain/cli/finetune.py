"""``edgetrain finetune run``: fine-tune with a layer schedule."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer
from rich.table import Table

from edgetrain.cli._common import console, handle_errors
from edgetrain.cli.schedule import SCHEDULE_HELP
from edgetrain.errors import ConfigError

# What the options' help shows, without importing the library (the help starts at once);
# a test keeps it equal to the library's.
MODES = ("conventional", "bpls", "pllr", "upscaled", "rdo")

app = typer.Typer(
    help="Fine-tuning within a budget: layer schedules (run, compare), the LR grid (grid) "
    "and transfer depth (sweep-depth).",
    epilog="Example: edgetrain finetune run --config digits-finetune --schedule 4421",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("run")
@handle_errors
def run_command(
    config: str = typer.Option(..., help="Recipe (path or shipped name) to fine-tune with."),
    schedule: str = typer.Option(..., help=SCHEDULE_HELP),
    mode: str = typer.Option(
        None, help=f"Derive this mode from the schedule's counts: {', '.join(MODES)}."
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Number of epochs."),
    name: str = typer.Option(None, help="Run name (default: <recipe name>-<schedule>)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    fold_bn: bool = typer.Option(True, help="Fold batch-norms into their layers first."),
    adaptive: str = typer.Option(
        None,
        help="Adapt the schedule during training within a budget: ops=F and/or mem=F "
        "(fractions of updating every row every step), optional signal=weight_change|"
        "grad_norm, every=N epochs, min_updates=N. --schedule gives the rows and cycle "
        "(e.g. 4444).",
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
) -> None:
    """Fine-tune a recipe with a layer schedule (mode from the notation, or --mode), or
    with one that adapts to what each layer still learns (--adaptive).

    Example: edgetrain finetune run --config digits-finetune --schedule 4421 --mode pllr

    Example: edgetrain finetune run --config digits-finetune --schedule 1111/1010/0101

    Example: edgetrain finetune run --config digits-finetune --schedule 4444 --adaptive ops=0.7
    """
    from edgetrain.cli.schedule import parse_schedule
    from edgetrain.cli.train import run_and_report
    from edgetrain.runs import load_config

    parsed = parse_schedule(schedule)
    if adaptive is not None:
        from edgetrain.finetune.adaptive import adaptive_label, parse_adaptive

        options = parse_adaptive(adaptive)
        if parsed.mode != "conventional" or mode is not None:
            raise ConfigError(
                f"--adaptive starts from a schedule that updates every row every step "
                f"(e.g. 4444), which gives the rows and the cycle; got '{parsed}'"
                + (f" with --mode {mode}" if mode is not None else "")
            )
        base = load_config(config, list(set_ or []), epochs=epochs)
        tree = base.to_dict()
        tree["name"] = name or f"{base.name}-{adaptive_label(options)}"
        callback = {
            "name": "adaptive-schedule",
            "rows": parsed.trained_rows,
            "cycle": parsed.cycle_length,
            "fold_bn": fold_bn,
            **options,
        }
        tree["callbacks"] = [*tree["callbacks"], callback]
        run_and_report(load_config(tree), runs_dir, overwrite, progress, report)
        return
    if mode is not None and "/" in str(parsed):
        raise ConfigError(
            "--mode derives a schedule from update counts and would drop the explicit "
            "matrix's placement; give the matrix of that mode instead"
        )
    try:
        if mode is not None:
            parsed = parsed.in_mode(mode)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    base = load_config(config, list(set_ or []), epochs=epochs)
    tree = base.to_dict()
    tree["name"] = name or f"{base.name}-{parsed.slug}"
    tree["callbacks"] = [
        *tree["callbacks"],
        {"name": "layer-schedule", "schedule": str(parsed), "fold_bn": fold_bn},
    ]
    run_and_report(load_config(tree), runs_dir, overwrite, progress, report)


@app.command("sweep-depth")
@handle_errors
def sweep_depth_command(
    config: str = typer.Option(..., help="Recipe (path or shipped name) to fine-tune with."),
    depths: str = typer.Option(
        None, help="Comma-separated cases N (train the last N layers); default every N."
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Epochs per case."),
    profile: str = typer.Option("reference", help="Cost-model profile for the energy column."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    overwrite: bool = typer.Option(False, help="Replace existing case runs."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    seeds: int = typer.Option(1, min=1, help="Runs per case (seeds): mean ± sd of top-1."),
) -> None:
    """One fine-tuning run per "train the last N layers" case (and seed), with accuracy
    (mean ± sd over seeds), loss, trainable MACs and energy, a CSV and three bar charts.

    Example: edgetrain finetune sweep-depth --config digits-finetune --depths 1,2,3,7 --epochs 4
    """
    from edgetrain.report.depth import plot_depth
    from edgetrain.runs import load_config, sweep_depth

    base = load_config(config, list(set_ or []), epochs=epochs)
    try:
        cases = [int(d) for d in depths.split(",")] if depths else None
    except ValueError:
        raise ConfigError(f"--depths '{depths}' must be comma-separated integers") from None
    results = sweep_depth(base, cases, runs_dir, profile, overwrite, progress, seeds)
    out = runs_dir / f"{base.name}-depth-sweep"
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict() for r in results]
    with (out / "sweep_depth.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plots = plot_depth(results, out)
    table = Table(title=f"transfer depth sweep: {base.name}")
    for h in (
        "N",
        "conv layers",
        "top-1 %" + (f" (mean ± sd, {seeds} seeds)" if seeds > 1 else ""),
        "loss",
        "trainable MACs",
        "nJ/sample",
        "gain vs N-1",
        "energy vs N-1",
    ):
        table.add_column(h, justify="right")
    previous = None
    for r in results:
        gain = "-" if previous is None else f"{r.accuracy - previous.accuracy:+.2f}"
        more = "-" if previous is None else f"{r.energy_nj - previous.energy_nj:+,.0f}"
        table.add_row(
            str(r.depth),
            str(r.conv_layers),
            f"{r.accuracy:.2f}" + (f" ± {r.accuracy_std:.2f}" if seeds > 1 else ""),
            f"{r.loss:.4f}",
            f"{r.trainable_macs:,}",
            f"{r.energy_nj:,.0f}",
            gain,
            more,
        )
        previous = r
    console.print(table)
    console.print(
        f"[green]table:[/] {out / 'sweep_depth.csv'}   [green]plots:[/] "
        + ", ".join(str(p) for p in plots)
    )


@app.command("grid")
@handle_errors
def grid_command(
    config: str = typer.Option(..., help="Recipe (path or shipped name) to tune."),
    upper: float = typer.Option(..., help="Highest learning rate of the coarse descent."),
    lower: float = typer.Option(..., help="Lowest learning rate of the coarse descent."),
    schedule: str = typer.Option(
        None, help="Layer schedule to tune the rate for (notation, matrix rows or a file)."
    ),
    mode: str = typer.Option(None, help=f"Derive this mode from the schedule: {', '.join(MODES)}."),
    tolerance: float = typer.Option(1.0, help="Accuracy points below the best in the LR range."),
    abort_epoch: int = typer.Option(20, min=1, help="Abort a trial still below --abort-below"),
    abort_below: float = typer.Option(30.0, help="... % accuracy after --abort-epoch epochs."),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Epochs per trial."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Geometric learning-rate search (factor 1.4, then 1.2 and 1.1 around the best; ties
    to the higher rate): best LR, best accuracy and the LR range within tolerance.

    Example: edgetrain finetune grid --config digits-finetune --upper 0.1 --lower 0.005
    """
    from edgetrain.cli.schedule import parse_schedule
    from edgetrain.runs import load_config, lr_grid

    base = load_config(config, list(set_ or []), epochs=epochs)
    tree = base.to_dict()
    if schedule:
        parsed = parse_schedule(schedule)
        try:
            parsed = parsed.in_mode(mode) if mode else parsed
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        tree["name"] = f"{base.name}-{parsed.slug}"
        tree["callbacks"] = [
            *tree["callbacks"],
            {"name": "layer-schedule", "schedule": str(parsed)},
        ]
    result = lr_grid(
        load_config(tree),
        upper,
        lower,
        tolerance=tolerance,
        abort_epoch=abort_epoch,
        abort_below=abort_below,
        runs_root=runs_dir,
        progress=progress,
    )
    table = Table(title=f"learning-rate grid: {tree['name']}")
    for h in ("lr", "stage", "best top-1 %", "at epoch", "status"):
        table.add_column(h, justify="right")
    for t in result.trials:
        style = "bold green" if t.lr == result.best_lr else None
        table.add_row(
            f"{t.lr:.4g}", str(t.stage), f"{t.accuracy:.2f}", str(t.epoch), t.status, style=style
        )
    console.print(table)
    low, high = result.lr_range
    console.print(
        f"best LR {result.best_lr:.4g}, best top-1 {result.best_accuracy:.2f} %, "
        f"LR range (within {result.tolerance:g} points) {low:.4g} .. {high:.4g}"
    )
    out = runs_dir / f"{tree['name']}-lr-grid.json"
    out.write_text(
        json.dumps(
            {
                "best_lr": result.best_lr,
                "best_accuracy": result.best_accuracy,
                "lr_range": list(result.lr_range),
                "tolerance": result.tolerance,
                "trials": [t.__dict__ for t in result.trials],
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"[green]grid:[/] {out}")


@app.command("compare")
@handle_errors
def compare_command(
    config: str = typer.Option(..., help="Recipe (path or shipped name) of the scenario."),
    schedules: str = typer.Option(
        "4442,4432,4422,4422_m,4421,4211_m",
        help="Comma-separated schedules (same rows); an explicit bit matrix "
        "(1111/1010/0101) is compared as written.",
    ),
    modes: str = typer.Option("bpls,pllr,upscaled,rdo", help="Modes to derive per schedule."),
    upper: float = typer.Option(..., help="Highest learning rate of each grid."),
    lower: float = typer.Option(..., help="Lowest learning rate of each grid."),
    tolerance: float = typer.Option(1.0, help="Accuracy points below the best in the LR range."),
    profile: str = typer.Option("reference", help="Cost-model profile for the cost columns."),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Epochs per trial."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    seeds: int = typer.Option(
        1, min=1, help="Runs per LR point (seeds): mean ± sd and a paired test vs conventional."
    ),
    adaptive: list[str] = typer.Option(
        None,
        help="Also an adaptive schedule within this budget (ops=F and/or mem=F, as in "
        "'finetune run --adaptive'), over the first schedule's rows and cycle; repeatable.",
    ),
) -> None:
    """A scenario's full comparison in one command: conventional, one more layer frozen,
    each schedule in each mode, and adaptive schedules (--adaptive), each with its LR
    grid; the scenario table as CSV.
    With more than 10 classes a top-5 column (at the best top-1 epoch) is added. Each
    row says whether, and with how many total training operations, it reached
    conventional fine-tuning's best top-1; a verdict line per schedule states it.

    Example: edgetrain finetune compare --config digits-finetune --upper 0.05 --lower 0.01

    Example: edgetrain finetune compare --config digits-finetune --upper 0.05 --lower 0.01 \
    --seeds 3 --adaptive ops=0.8
    """
    from edgetrain.finetune.adaptive import parse_adaptive
    from edgetrain.runs import compare_schedules, load_config
    from edgetrain.runs.compare import scenario_table, target_table, verdicts

    budgets = [parse_adaptive(a) for a in adaptive or []]
    base = load_config(config, list(set_ or []), epochs=epochs)
    try:
        rows = compare_schedules(
            base,
            [s for s in schedules.split(",") if s],
            upper,
            lower,
            modes=[m for m in modes.split(",") if m],
            tolerance=tolerance,
            runs_root=runs_dir,
            progress=progress,
            profile=profile,
            seeds=seeds,
            adaptive=budgets,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = runs_dir / f"{base.name}-compare.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].to_dict()))
        writer.writeheader()
        writer.writerows(r.to_dict() for r in rows)
    for title, (header, cells) in (
        (f"scenario table: {base.name}", scenario_table(rows, targets=False)),
        ("reaching conventional fine-tuning's best top-1", target_table(rows)),
    ):
        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="left" if h in ("schedule", "mode") else "right")
        for row in cells:
            table.add_row(*row)
        console.print(table)
    for line in verdicts(rows):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"[green]table:[/] {out}")
