"""``edgetrain sweep``: search compression settings with Optuna (run, worker, report)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgetrain.cli._common import (
    EXIT_INTERRUPTED,
    console,
    err_console,
    handle_errors,
    parse_options,
    sigterm_as_interrupt,
)
from edgetrain.errors import ConfigError

__all__ = ["app"]

app = typer.Typer(
    help="Search compression settings (sparsities, fine-tuning) against the latency measured "
    "on the runtime, with Optuna. Studies live in sqlite:///runs/<name>/study.db unless "
    "--storage names a database (PostgreSQL for workers on several machines).",
    epilog="Example: edgetrain sweep run sweep.yaml && edgetrain sweep report sweep.yaml",
    no_args_is_help=True,
    add_completion=False,
)

_STORAGE_HELP = (
    "Study database URL, e.g. postgresql://user@host/db (default: "
    "sqlite:///<root>/<name>/study.db)."
)


def _trial_line(trial: Any, objectives: list[str]) -> str:
    attrs = trial.user_attrs
    if trial.state.name == "PRUNED":
        top1 = attrs.get("top1_at_pruning")
        shown = "" if top1 is None else f", top-1 {top1:.4g} then"
        return f"trial {trial.number}: pruned after epoch {attrs.get('pruned_at_epoch')}{shown}"
    if trial.state.name != "COMPLETE":
        return f"trial {trial.number}: failed ({attrs.get('fail_reason', 'unknown')})"
    shown = ", ".join(
        f"{name} {attrs[name]:.4g}"
        for name in dict.fromkeys(["top1", "latency_ms", *objectives])
        if isinstance(attrs.get(name), (int, float))
    )
    dup = (
        f" (same architecture as trial {attrs['duplicate_of']})" if "duplicate_of" in attrs else ""
    )
    return f"trial {trial.number}: {shown}{dup}"


def _work(
    config_path: Path,
    storage: str | None,
    root: Path,
    coordinator: bool,
    trials: int | None,
    max_trials: int | None,
    progress: bool,
) -> Any:
    from edgetrain.search import load_sweep, run

    config, base = load_sweep(config_path)
    config.check(config.load_recipe(base))  # parameters that fit no recipe key: before the bar
    names = [m.name for m in config.metrics]
    total = trials or config.budget.trials
    bar = Progress(
        TextColumn("[bold]sweep {task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    with bar:
        task = bar.add_task("trials", total=max_trials or total, name=config.name)

        def on_trial(trial: Any) -> None:
            bar.console.print(_trial_line(trial, names), highlight=False)
            bar.advance(task)

        def log(text: str) -> None:
            bar.console.print(f"[dim]{text}[/]", highlight=False)

        try:
            with sigterm_as_interrupt():
                summary = run(
                    config,
                    base,
                    storage=storage,
                    root=root,
                    coordinator=coordinator,
                    trials=trials,
                    max_trials=max_trials,
                    on_trial=on_trial,
                    log=log,
                )
        except KeyboardInterrupt:
            err_console.print(
                "[yellow]interrupted[/]: finished trials are kept and the interrupted one is "
                f"queued again; resume with 'edgetrain sweep run {config_path}'"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(
        f"this process: {summary.completed} trials measured ({summary.duplicates} reused a "
        f"duplicate's result), {summary.pruned} pruned early, {summary.failed} failed; "
        f"stopped by {summary.stopped_by}"
    )
    return config


def _storage_of(config: Any, storage: str | None, root: Path) -> str:
    from edgetrain.search import default_storage

    return storage or default_storage(config, root)


@app.command("run")
@handle_errors
def run_command(
    config: Path = typer.Argument(..., help="Sweep config (YAML)."),
    storage: str = typer.Option(None, help=_STORAGE_HELP),
    trials: int = typer.Option(None, min=1, help="Budget override (total trials)."),
    root: Path = typer.Option(Path("runs"), help="Folder of sweep folders."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Run a sweep (or resume it) until its budget is spent, then write its report.

    Each trial sets the parameters in the recipe, prunes, fine-tunes, exports, quantizes
    when the recipe says so, and benchmarks on the runtime. A resumed sweep keeps every
    finished trial; --trials larger than before runs the difference.

    Example: edgetrain sweep run sweep.yaml --trials 40
    """
    cfg = _work(config, storage, root, True, trials, None, progress)
    url = _storage_of(cfg, storage, root)
    if report:
        _report(cfg.name, url, root / cfg.name / "report")
    console.print(f"[dim]browse the study: optuna-dashboard {url}[/]", highlight=False)


@app.command("worker")
@handle_errors
def worker_command(
    config: Path = typer.Argument(..., help="Sweep config (YAML), the same on every worker."),
    storage: str = typer.Option(..., help=_STORAGE_HELP),
    max_trials: int = typer.Option(None, min=1, help="Stop after this many trials."),
    root: Path = typer.Option(Path("runs"), help="Folder of this worker's trial files."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Join a sweep on a shared database and measure trials until none is left.

    Start any number of workers on any machines with the same config and --storage; a
    dead worker's trial is failed by heartbeat and run again by another worker. A worker
    that finds no queued trial waits for those still running, then stops.

    Example: edgetrain sweep worker sweep.yaml --storage postgresql://edge@db-host/sweeps
    """
    _work(config, storage, root, False, None, max_trials, progress)


@app.command("bench-worker")
@handle_errors
def bench_worker_command(
    config: Path = typer.Argument(..., help="Sweep config (YAML), the same as the workers'."),
    storage: str = typer.Option(None, help=_STORAGE_HELP),
    runtime: str = typer.Option(
        None, help="Runtime on this device (default: the config's runtime.name)."
    ),
    option: list[str] = typer.Option(
        None, "--option", "-o", help="Runtime option key=value (with --runtime; repeatable)."
    ),
    idle_exit: float = typer.Option(
        None, min=1.0, help="Also stop after this many seconds without a request."
    ),
    root: Path = typer.Option(Path("runs"), help="Folder of sweep folders (default storage)."),
) -> None:
    """Measure every latency of a sweep on this device, one at a time.

    With 'runtime: {..., bench_worker: true}' in the sweep config, training workers
    queue each candidate's files in the sweep's database and wait; this process takes
    them oldest first, benchmarks them with its runtime and writes the results back,
    so every latency of the sweep comes from this one device. It stops when the sweep's
    budget is spent. Start it before or after the workers; run one per sweep.

    Example: edgetrain sweep bench-worker sweep.yaml --storage postgresql://edge@db/sweeps
    """
    from edgetrain.search import bench_worker, load_sweep

    cfg, _ = load_sweep(config)
    if not cfg.runtime.bench_worker:
        raise ConfigError(
            f"'{config}' measures on each worker (runtime.bench_worker is false); set "
            "runtime: {..., bench_worker: true} so that workers queue their measurements"
        )
    options = parse_options(option, "--option")
    if options and runtime is None:
        raise ConfigError("--option needs --runtime (the config's options apply otherwise)")

    def log(text: str) -> None:
        console.print(text, highlight=False)

    try:
        with sigterm_as_interrupt():
            served = bench_worker(
                cfg,
                storage=storage,
                root=root,
                runtime=runtime,
                options=options,
                idle_exit_s=idle_exit,
                log=log,
            )
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/]: the request being measured is queued again when a "
            "bench worker starts"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(f"measured {served} request(s); the sweep's budget is spent")


def _report(name: str, storage: str, out: Path) -> None:
    from edgetrain.report.sweep import build_sweep_report, latency_macs_correlation
    from edgetrain.search import load_sweep_data

    data = load_sweep_data(name, storage)
    page = build_sweep_report(data, out)
    table = Table(title=f"sweep {name}: best feasible trials")
    for h in ("trial", "top-1 %", "drop", "latency ms", "vs baseline", "MACs (M)"):
        table.add_column(h, justify="right")
    for t in data.best(5):
        table.add_row(
            str(t.number),
            f"{t.get('top1'):.2f}",
            f"{t.get('top1_drop'):+.2f}",
            f"{t.get('latency_ms'):.3f}",
            f"{t.get('latency_ratio'):.2f}",
            f"{t.get('macs') / 1e6:.2f}",
        )
    console.print(table)
    r = latency_macs_correlation(data)
    beat = len(data.beats_reference()) if data.reference else None
    console.print(
        f"{len(data.complete)} measured, {len(data.pruned)} pruned early, "
        f"{len(data.failed)} failed, ruined rate "
        f"{100 * data.ruined_rate:.0f}%"
        + ("" if beat is None else f", {beat} beat the reference on latency and top-1")
        + ("" if r is None or math.isnan(r) else f", latency-MACs correlation {r:.2f}"),
        highlight=False,
    )
    console.print(f"[green]report:[/] {page}")


@app.command("report")
@handle_errors
def report_command(
    sweep: str = typer.Argument(..., help="Sweep config (YAML), sweep folder, or sweep name."),
    storage: str = typer.Option(None, help=_STORAGE_HELP),
    root: Path = typer.Option(Path("runs"), help="Folder of sweep folders."),
    out: Path = typer.Option(None, help="Report folder (default: <root>/<name>/report)."),
) -> None:
    """Write a sweep's report: plots and report.html from its study.

    Best trials, the Pareto front (latency vs top-1) with the baseline and the reference
    recipe, fANOVA importance, correlations, latency vs sparsity, best-so-far, latency
    vs MACs.

    Example: edgetrain sweep report sweep.yaml
    """
    path = Path(sweep)
    if path.is_file():
        from edgetrain.search import load_sweep

        name = load_sweep(path)[0].name
    elif path.is_dir():
        name, root = path.name, path.parent
    else:
        name = sweep
    url = storage or f"sqlite:///{root / name / 'study.db'}"
    if storage is None and not (root / name / "study.db").is_file():
        raise ConfigError(
            f"no sweep '{name}' under {root}; pass the sweep's config, folder or --storage"
        )
    _report(name, url, out or root / name / "report")
