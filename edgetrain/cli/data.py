"""``edgetrain data list|describe|prepare``: the data set registry."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from edgetrain.cli._common import console, handle_errors, parse_options

app = typer.Typer(
    help="List, describe and prepare data sets.",
    epilog="Example: edgetrain data describe ucr:GunPoint",
    no_args_is_help=True,
    add_completion=False,
)

OPTION_HELP = "Data set option key=value (repeatable), e.g. --option channels=3."


@app.command("list")
@handle_errors
def list_command(
    pattern: str = typer.Argument("*", help="Shell pattern on names, e.g. 'keywords*'."),
) -> None:
    """List registered data sets.

    Example: edgetrain data list 'keywords*'
    """
    from edgetrain import data as datasets

    table = Table(title="edgetrain data sets")
    table.add_column("name")
    table.add_column("offline")
    table.add_column("description")
    for entry in datasets.DATASETS:
        if entry.name not in datasets.list_datasets(pattern):
            continue
        name = f"{entry.name}:<name>" if entry.meta.get("parametric") else entry.name
        offline = "yes" if entry.meta.get("offline", True) else "needs files"
        table.add_row(name, offline, entry.summary)
    console.print(table)


@app.command("describe")
@handle_errors
def describe_command(
    name: str = typer.Argument(..., help="Data set name, e.g. digits-32 or ucr:GunPoint."),
    option: list[str] = typer.Option(None, "--option", "-o", help=OPTION_HELP),
) -> None:
    """Print shape, classes, split sizes and source of a data set.

    Example: edgetrain data describe digits-32 --option channels=3
    """
    from edgetrain import data as datasets

    info = datasets.describe(name, **parse_options(option))
    table = Table(show_header=False, title=info.name)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("task", info.task)
    table.add_row("input shape", " x ".join(map(str, info.input_shape)))
    table.add_row("classes", f"{info.num_classes}: {', '.join(info.classes)}")
    for split, size in info.split_sizes.items():
        table.add_row(f"{split} samples", f"{size:,}")
    table.add_row("source", info.source)
    for key, value in info.extra.items():
        if isinstance(value, str | int | float | bool):
            table.add_row(key, str(value))
    console.print(table)


@app.command("prepare")
@handle_errors
def prepare_command(
    name: str = typer.Argument(..., help="Data set name, e.g. keywords-en."),
    option: list[str] = typer.Option(None, "--option", "-o", help=OPTION_HELP),
) -> None:
    """Generate or load a data set once so later runs start at once (fills the cache).

    Example: edgetrain data prepare keywords-de@8k
    """
    from edgetrain import data as datasets

    options = parse_options(option)
    started = time.perf_counter()
    sizes = {s: len(datasets.create(name, s, **options)) for s in datasets.SPLITS}
    seconds = time.perf_counter() - started
    console.print(
        f"[green]ready:[/] {name} ({', '.join(f'{s} {n:,}' for s, n in sizes.items())}) "
        f"in {seconds:.1f} s; cache folder {datasets.cache_dir()}"
    )
