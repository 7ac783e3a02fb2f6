"""Shared pieces of the CLI: consoles, error handling (exit 2), ``key=value`` options."""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from edgetrain._yaml import YAMLError, safe_load
from edgetrain.errors import EdgetrainError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "console",
    "default_command_group",
    "err_console",
    "handle_errors",
    "parse_options",
]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def shipped_names(folder: str) -> list[str]:
    """Names of the YAML files shipped in ``edgetrain/<folder>``, read without importing
    the package that holds them (for help texts)."""
    root = resources.files("edgetrain").joinpath(folder)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print one error line to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn user errors into one red line and exit status 2 (keeps the signature for typer)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgetrainError as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def default_command_group(default: str) -> type[TyperGroup]:
    """A command group that runs its ``default`` sub-command when the first argument names
    no sub-command (``edgetrain cost MODEL`` is ``edgetrain cost analyze MODEL``)."""

    class _DefaultCommandGroup(TyperGroup):
        def resolve_command(self, ctx, args):  # noqa: ANN001, ANN201 - click's signature
            if args and args[0] not in self.commands and not args[0].startswith("-"):
                args = [default, *args]
            return super().resolve_command(ctx, args)

    return _DefaultCommandGroup


def parse_options(items: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """``["channels=3", "words=[yes,no]"]`` -> ``{"channels": 3, "words": ["yes", "no"]}``."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise EdgetrainError(f"{flag} '{item}' must look like key=value")
        try:
            options[key] = safe_load(raw)
        except YAMLError:
            options[key] = raw
    return options


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``) like Ctrl-C, so a killed run records ``interrupted``."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def kib(value: float) -> str:
    """Bytes as KiB with one decimal, for tables."""
    return f"{value / 1024:,.1f}"


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for a loop of known length: yields ``advance(done, total)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )
    with bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
