"""The one config shell: a strict pydantic base, reading a mapping from a path, YAML text,
a shipped file or a dict, and one style of validation error.

Run configs, compression recipes, sweep configs and device profiles are all read here,
so every one of them reports a bad key the same way, in one line: where, the key path,
what was wrong, and the valid choices.

Example:
    >>> class Point(StrictConfig):
    ...     x: int
    >>> load_validated(Point, {"x": 1, "y": 2}, what="point")
    Traceback (most recent call last):
    ...
    edgetrain.errors.ConfigError: point: unknown key 'y' in the top level; valid keys: x
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from edgetrain._yaml import YAMLError, safe_load
from edgetrain.errors import ConfigError, EdgetrainError

__all__ = [
    "ConfigSource",
    "NamedConfig",
    "ShippedFiles",
    "StrictConfig",
    "format_validation_error",
    "load_validated",
    "read_mapping",
]

M = TypeVar("M", bound=BaseModel)


class StrictConfig(BaseModel):
    """Base of every config model: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class NamedConfig(BaseModel):
    """``{name: <registry key>, <option>: <value>, ...}`` for optimizers, schedulers, callbacks."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@dataclass(frozen=True)
class ShippedFiles:
    """YAML files shipped inside a package folder, found by name (with or without .yaml).

    Example:
        >>> ShippedFiles("edgetrain.cost", "profiles").path("reference") is not None
        True
    """

    package: str
    folder: str = ""

    def _root(self) -> Any:
        root = resources.files(self.package)
        return root / self.folder if self.folder else root

    def names(self) -> list[str]:
        """Sorted stems of the shipped files."""
        return sorted(p.name[:-5] for p in self._root().iterdir() if p.name.endswith(".yaml"))

    def path(self, name: str) -> Path | None:
        """The shipped file called ``name``, or None."""
        stem = name[:-5] if name.endswith(".yaml") else name
        if not stem or "/" in stem or "\\" in stem:
            return None
        candidate = self._root() / f"{stem}.yaml"
        return Path(str(candidate)) if candidate.is_file() else None


ConfigSource = str | Path | Mapping[str, Any]


def read_mapping(
    source: ConfigSource,
    *,
    what: str,
    shipped: ShippedFiles | None = None,
    text_allowed: bool = False,
    hint: str = "",
) -> tuple[dict[str, Any], Path | None]:
    """A config tree from a mapping (deep-copied), a file path, a shipped name or YAML text.

    Args:
        source: the mapping, path, shipped name, or (with ``text_allowed``) YAML text.
        what: what the config is, for messages (``"compression recipe"``).
        shipped: the shipped files that a bare name may refer to.
        text_allowed: accept YAML text (a string holding ``:``, ``{`` or a newline).
        hint: what a mapping of this kind holds, for the not-a-mapping error.

    Returns:
        ``(tree, file)``: the parsed mapping and the file it came from (None for a
        mapping or text).

    Raises:
        ConfigError: a missing file, invalid YAML (with line and column) or a non-mapping.
    """
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), None
    path = Path(source)
    file: Path | None = None
    if path.is_file():
        file = path
    elif shipped is not None and (found := shipped.path(str(source))) is not None:
        file = found
    if file is not None:
        where = f"{what} '{file}'"
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                f"{exc.start}); pass a YAML file"
            ) from None
    elif text_allowed and isinstance(source, str) and any(c in source for c in ":\n{"):
        text, where = source, what
    else:
        kinds = ["a YAML path", *(["YAML text"] if text_allowed else [])]
        if shipped is not None:
            kinds.append(f"a shipped name ({', '.join(shipped.names())})")
        listed = ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else kinds[0]
        raise ConfigError(f"{what} '{source}' not found; pass {listed}")
    try:
        tree = safe_load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"{where}: invalid YAML{at}: {problem}") from None
    if not isinstance(tree, dict):
        holds = f" ({hint})" if hint else ""
        raise ConfigError(
            f"{where}: must be a YAML mapping of keys{holds}, not {type(tree).__name__}"
        )
    return tree, file


def load_validated(
    model: type[M], tree: Mapping[str, Any], *, what: str, where: Path | None = None
) -> M:
    """Validate ``tree`` into ``model``; every failure is one :class:`ConfigError` line.
    A number that is not finite (``nan``, ``.inf``) is refused wherever it appears."""
    prefix = f"{what} '{where}'" if where is not None else what
    bad = _non_finite(tree)
    if bad is not None:
        path, value = bad
        raise ConfigError(f"{prefix}: {path}: {value} is not a finite number; give a finite value")
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        message = format_validation_error(exc, model)
    except EdgetrainError as exc:
        message = str(exc)
    raise ConfigError(f"{prefix}: {message}")


def _non_finite(tree: Any, path: str = "") -> tuple[str, float] | None:
    """The first ``(key path, value)`` holding a NaN or infinite float, or None."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return path or "the value", tree
    if isinstance(tree, Mapping):
        items: Iterable[tuple[Any, Any]] = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return None
    for key, value in items:
        found = _non_finite(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first error of ``exc`` as one line: key path, problem, valid choices."""
    err = exc.errors(include_url=False)[0]
    parts = tuple(p for p in err["loc"] if not _is_union_tag(p))
    loc = ".".join(str(p) for p in parts)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        where = ".".join(str(p) for p in parts[:-1]) or "the top level"
        valid = ", ".join(_fields_at(model, parts[:-1])) or "none"
        return f"unknown key '{parts[-1]}' in {where}; valid keys: {valid}"
    if err["type"] == "missing":
        return f"missing required key '{loc}'"
    if err["type"] == "value_error" or not loc:
        return f"{loc}: {msg}" if loc else msg
    return f"{loc}: {msg} (got {err.get('input')!r})"


def _is_union_tag(part: Any) -> bool:
    # pydantic names the union member it tried: "list[...]", "function-after[...]", or
    # the member's class name
    return isinstance(part, str) and ("[" in part or part in _model_names())


def _model_names() -> set[str]:
    names, todo = set(), [BaseModel]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            names.add(sub.__name__)
            todo.append(sub)
    return names


def _unwrap(annotation: Any) -> Any:
    """The config model inside ``X | None``, ``list[X]`` and ``dict[str, X]``, if any."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType, list, tuple, dict):
        for arg in get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the model at ``path`` (list indices and dict keys skipped)."""
    node: Any = model
    for part in path:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is not None:
                node = _unwrap(field.annotation)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []
