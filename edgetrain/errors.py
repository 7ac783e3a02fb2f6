"""User-facing errors.

Every error a user can cause (a bad name, a malformed file, a missing folder) is an
:class:`EdgetrainError` whose message is one line naming the bad input and the fix.
The CLI prints that line and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EdgetrainError",
    "MissingDependencyError",
    "UnknownNameError",
    "one_line",
]


class EdgetrainError(ValueError):
    """Base class of all errors caused by bad user input."""


class UnknownNameError(EdgetrainError, KeyError):
    """A registry was asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(EdgetrainError):
    """A configuration file or override is invalid."""


class DataError(EdgetrainError):
    """A data set is missing, malformed or cannot be prepared."""


class CheckpointError(EdgetrainError):
    """A checkpoint is missing, corrupted or belongs to another architecture."""


class MissingDependencyError(EdgetrainError, ImportError):
    """An optional dependency (a Python extra or a system program) is missing."""


def one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (for embedding in error messages)."""
    return " ".join(str(exc).split()) or type(exc).__name__
