"""The ``edgetrain`` command line: one module per sub-command, each thin.

Every command parses its options, calls the library and prints; bad input gives one
red line and exit status 2.
"""

from __future__ import annotations

import sys
import warnings

import typer

from edgetrain import __version__
from edgetrain.cli import compress as _compress
from edgetrain.cli import cost as _cost
from edgetrain.cli import data as _data
from edgetrain.cli import diagnose as _diagnose
from edgetrain.cli import finetune as _finetune
from edgetrain.cli import schedule as _schedule
from edgetrain.cli import sweep as _sweep
from edgetrain.cli._common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, fail
from edgetrain.cli.bench import bench_command
from edgetrain.cli.demo import demo_command
from edgetrain.cli.export import export_command
from edgetrain.cli.models import models_command
from edgetrain.cli.prune import grow_command, prune_train_command
from edgetrain.cli.report import report_command
from edgetrain.cli.train import train_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgetrain",
    help="Train, fine-tune and compress neural networks for devices with little compute, "
    "energy and memory.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgetrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Train, fine-tune and compress neural networks for small devices."""


app.command("demo")(demo_command)
app.command("train")(train_command)
app.command("prune-train")(prune_train_command)
app.command("grow")(grow_command)
app.command("report")(report_command)
app.add_typer(_data.app, name="data")
app.add_typer(_cost.app, name="cost")
app.add_typer(_compress.app, name="compress")
app.add_typer(_finetune.app, name="finetune")
app.add_typer(_schedule.app, name="schedule")
app.add_typer(_sweep.app, name="sweep")
app.add_typer(_diagnose.app, name="diagnose")
app.command("models")(models_command)
app.command("export")(export_command)
app.command("bench")(bench_command)


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object) -> str:
    # A warning for a person at a terminal: what happened, not where in the library.
    return f"warning: {message}\n"


def main() -> None:
    """Entry point of the ``edgetrain`` console script: bad options and arguments are one
    line and exit status 2, like every other bad input (not a usage box)."""
    warnings.formatwarning = _one_line_warning
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        # click's UsageError (a bad option, a missing argument, an unknown command),
        # whichever click Typer runs on: exit code 2 and a message of its own
        if getattr(exc, "exit_code", None) != EXIT_BAD_INPUT or not hasattr(exc, "format_message"):
            raise
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "edgetrain"
        message = " ".join(exc.format_message().split())
        raise SystemExit(fail(f"{message} (see '{where} --help')").exit_code) from None
    sys.exit(code if isinstance(code, int) else 0)
