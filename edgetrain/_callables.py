"""Importing a callable named ``path/to/file.py:name`` or ``package.module:name``: how
users bring their own models and data sets.

A file is imported under a name derived from its absolute path and re-imported when its
content changes; its SHA-256 is kept, so a run can say later that the file changed. A
module is imported from the current folder or the Python path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetrain.errors import ConfigError, one_line

__all__ = ["ImportedCallable", "file_digest", "import_callable"]


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ImportedCallable:
    """A callable found from a spec: ``text`` is the spec in resolved form (absolute
    ``file.py:name`` or ``module:name``), ``kind`` ``"file"`` or ``"module"``."""

    text: str
    kind: str
    fn: Callable[..., Any]
    path: Path | None = None
    sha256: str | None = None


def import_callable(text: str, what: str) -> ImportedCallable:
    """Import the callable ``text`` names; ``what`` names the spec in messages.

    Raises:
        ConfigError: a malformed spec, a missing file or module, a missing or
            non-callable attribute, or a file that fails to import, in one line.
    """
    target, _, attr = text.rpartition(":")
    if not target or not attr.isidentifier():
        raise ConfigError(
            f"{what} '{text}' must look like path/to/file.py:callable or package.module:callable"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        return _from_file(text, Path(target), attr, what)
    return _from_module(text, target, attr, what)


def _from_file(text: str, path: Path, attr: str, what: str) -> ImportedCallable:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{what} '{text}': file '{path}' not found; check the path")
    digest = file_digest(path)
    name = f"edgetrain_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    module = sys.modules.get(name)
    if module is None or getattr(module, "__edgetrain_sha256__", None) != digest:
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"{what} '{text}': '{path}' is not a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ConfigError(
                f"{what} '{text}': importing '{path}' failed: {one_line(exc)}"
            ) from exc
        module.__edgetrain_sha256__ = digest  # type: ignore[attr-defined]
    fn = _attribute(text, module, attr, f"'{path}'", what)
    return ImportedCallable(f"{path}:{attr}", "file", fn, path, digest)


def _from_module(text: str, target: str, attr: str, what: str) -> ImportedCallable:
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:  # importable from the current directory, as the spec says
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{what} '{text}': module '{target}' not found ({one_line(exc)}); run from "
            "its folder or put it on the Python path"
        ) from exc
    except Exception as exc:
        raise ConfigError(f"{what} '{text}': importing '{target}' failed: {one_line(exc)}") from exc
    finally:
        if added:
            sys.path.remove(cwd)
    fn = _attribute(text, module, attr, f"module '{target}'", what)
    return ImportedCallable(text, "module", fn)


def _attribute(text: str, module: Any, attr: str, where: str, what: str) -> Callable[..., Any]:
    fn = getattr(module, attr, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        hint = f"; callables there: {', '.join(public[:8])}" if public else ""
        raise ConfigError(f"{what} '{text}': {where} has no '{attr}'{hint}")
    if not callable(fn):
        raise ConfigError(f"{what} '{text}': '{attr}' in {where} is not callable")
    return fn
