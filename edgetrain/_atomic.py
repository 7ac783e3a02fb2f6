"""Atomic file writes: write a temporary file beside the target, then rename it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from edgetrain.errors import EdgetrainError


def _file_mode() -> int:
    # mkstemp creates 0600 files; outputs should get the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def writable_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """``folder``, created with its parents if missing, once a file can be written in it.

    Raises:
        EdgetrainError: one line naming ``what`` and the folder, when it is a file, cannot
            be created or is not writable: checked before the work that fills it starts.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EdgetrainError(
            f"{what} '{folder}' cannot be created ({reason}); choose a writable location"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EdgetrainError(f"{what} '{folder}' is not writable; choose a writable location")
    return folder


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path`` atomically.

    On any error (including Ctrl-C) the temporary file is removed and ``path`` keeps
    its previous content.
    """
    path = Path(path)
    writable_folder(path.parent, f"the folder of '{path.name}'")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EdgetrainError(
            f"cannot write '{path}' ({exc.strerror}); choose a writable location"
        ) from None
    try:
        os.chmod(tmp, _file_mode())
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
