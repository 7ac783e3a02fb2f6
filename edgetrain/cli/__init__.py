"""The ``edgetrain`` command line: one module per sub-command, each thin.

Every command parses its options, calls the library and prints; bad input gives one
red line and exit status 2.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import sys
import warnings
from importlib import resources
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from edgetrain import __version__
from edgetrain.cli._common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, fail

__all__ = ["app", "main"]

# Sub-commands by name: (module under edgetrain.cli, attribute). A command's module (and
# what it imports: torch, matplotlib ...) is imported only when that command runs or shows
# its own help; the list in "edgetrain --help" is read from the modules' source.
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "demo_command"),
    "train": ("train", "train_command"),
    "prune-train": ("prune", "prune_train_command"),
    "grow": ("prune", "grow_command"),
    "grow-prune": ("prune", "grow_prune_command"),
    "morphnet": ("prune", "morphnet_command"),
    "report": ("report", "report_command"),
    "models": ("models", "models_command"),
    "export": ("export", "export_command"),
    "bench": ("bench", "bench_command"),
    "data": ("data", "app"),
    "cost": ("cost", "app"),
    "compress": ("compress", "app"),
    "finetune": ("finetune", "app"),
    "schedule": ("schedule", "app"),
    "sweep": ("sweep", "app"),
    "diagnose": ("diagnose", "app"),
}


def _summary(module: str, attribute: str) -> str:
    """A command's help text, read from its module's source without importing it."""
    source = resources.files("edgetrain.cli").joinpath(f"{module}.py").read_text("utf-8")
    for node in ast.parse(source).body:
        is_app = isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "app" for t in node.targets
        )
        if attribute == "app" and is_app:
            for keyword in getattr(node.value, "keywords", []):  # type: ignore[attr-defined]
                if keyword.arg == "help":
                    return str(ast.literal_eval(keyword.value))
        if isinstance(node, ast.FunctionDef) and node.name == attribute:
            return ast.get_docstring(node) or ""
    return ""


@functools.cache
def load_command(name: str) -> Any:
    """The click command of sub-command ``name``, importing its module."""
    module_name, attribute = _COMMANDS[name]
    target = getattr(importlib.import_module(f"edgetrain.cli.{module_name}"), attribute)
    if isinstance(target, typer.Typer):
        group = typer.main.get_group(target)
        group.name = name
        return group
    single = typer.Typer(add_completion=False, rich_markup_mode="rich")
    single.command(name)(target)
    return typer.main.get_command(single)


class _LazyGroup(TyperGroup):
    """The root group: lists every sub-command, imports one only when it is used."""

    listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in _COMMANDS:
            return None
        if self.listing:  # "edgetrain --help": names and summaries only
            return TyperCommand(name=cmd_name, help=_summary(*_COMMANDS[cmd_name]))
        return load_command(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:  # click's UsageError: suggest from the lazy list too
            message = getattr(exc, "message", None)
            if args and isinstance(message, str) and "Did you mean" not in message:
                matches = difflib.get_close_matches(args[0], list(_COMMANDS))
                if matches:
                    suggestions = ", ".join(repr(m) for m in matches)
                    exc.message = f"{message.rstrip('.')}. Did you mean {suggestions}?"  # type: ignore[attr-defined]
            raise

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


app = typer.Typer(
    name="edgetrain",
    cls=_LazyGroup,
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
