"""Lazy imports of optional dependencies with an install hint."""

from __future__ import annotations

import importlib
import shutil
from types import ModuleType

from edgetrain.errors import MissingDependencyError


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error naming the extra that provides it.

    Args:
        module: importable module name, e.g. ``"aeon"``.
        extra: the edgetrain extra that installs it, e.g. ``"timeseries"``.
        package: the PyPI name when it differs from ``module``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module
        raise MissingDependencyError(
            f"{name} is not installed; install it with: pip install 'edgetrain[{extra}]'"
        ) from exc


def require_program(program: str, apt_package: str | None = None) -> str:
    """Return the path of a system program or raise an error naming how to install it."""
    path = shutil.which(program)
    if path is None:
        pkg = apt_package or program
        raise MissingDependencyError(
            f"the program '{program}' was not found; install it with: "
            f"sudo apt-get install {pkg} (or run scripts/setup-system.sh)"
        )
    return path
