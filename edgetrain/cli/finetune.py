"""``edgetrain finetune run``: fine-tune with a layer schedule."""

from __future__ import annotations

from pathlib import Path

import typer

from edgetrain.cli._common import handle_errors
from edgetrain.cli.train import resolve_recipe, run_and_report
from edgetrain.engine import load_config
from edgetrain.errors import ConfigError
from edgetrain.finetune import MODES, Schedule

app = typer.Typer(
    help="Layer-scheduled fine-tuning (BPLS and the modes derived from a schedule).",
    epilog="Example: edgetrain finetune run --config digits-finetune --schedule 4421",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("run")
@handle_errors
def run_command(
    config: str = typer.Option(..., help="Recipe (path or shipped name) to fine-tune with."),
    schedule: str = typer.Option(..., help="Schedule notation, e.g. 4421, 4422_m, 4421_rdo."),
    mode: str = typer.Option(
        None, help=f"Derive this mode from the schedule's counts: {', '.join(MODES)}."
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Number of epochs."),
    name: str = typer.Option(None, help="Run name (default: <recipe name>-<schedule>)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    fold_bn: bool = typer.Option(True, help="Fold batch-norms into their layers first."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
) -> None:
    """Fine-tune a recipe with a layer schedule (mode from the notation, or --mode).

    Example: edgetrain finetune run --config digits-finetune --schedule 4421 --mode pllr
    """
    try:
        parsed = Schedule.parse(schedule)
        if mode is not None:
            parsed = parsed.in_mode(mode)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    base = load_config(resolve_recipe(config), list(set_ or []), epochs=epochs)
    tree = base.to_dict()
    tree["name"] = name or f"{base.name}-{parsed}"
    tree["callbacks"] = [
        *tree["callbacks"],
        {"name": "layer-schedule", "schedule": str(parsed), "fold_bn": fold_bn},
    ]
    run_and_report(load_config(tree), runs_dir, overwrite, progress, report)
