"""A small registry: ``register`` under a string name, ``create(name, **kw)``, ``list(pattern)``.

Registries are how the CLI and YAML recipes name things (data sets, models, optimizers,
callbacks). An entry is any callable; its keyword arguments are checked against its
signature so that a typo in a recipe gives one precise line instead of a traceback.

A registry is complete in any process: its first lookup imports the modules that
:mod:`edgetrain.plugins` lists for its kind, whichever modules were imported before.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from edgetrain.errors import ConfigError, UnknownNameError

__all__ = ["Registry", "RegistryEntry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registered callable with its name and free-form metadata."""

    name: str
    fn: Callable[..., T]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """First line of the entry's docstring."""
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0].replace("``", "") if doc else ""


class Registry(Generic[T]):
    """Maps names to factories.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(num_classes: int = 10): ...
        >>> MODELS.names()
        ['tiny']
    """

    def __init__(self, kind: str, prefix_sep: str | None = None) -> None:
        self.kind = kind
        # With a separator (":" for "ucr:GunPoint"), "ucr:<anything>" resolves to "ucr".
        self.prefix_sep = prefix_sep
        self._entries: dict[str, RegistryEntry[T]] = {}
        self._loaded = False

    def _complete(self) -> None:
        """Load this kind's plugins once, before the first lookup."""
        if not self._loaded:
            self._loaded = True  # first: a plugin module may look itself up while loading
            from edgetrain import plugins

            plugins.load(self.kind)

    def register(self, name: str, **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``fn`` under ``name``; ``meta`` is kept with the entry."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = RegistryEntry(name, fn, dict(meta))
            return fn

        return deco

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``."""
        self._complete()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        try:
            self.entry(str(name))
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[RegistryEntry[T]]:
        return iter(self._entries[n] for n in self.names())

    def entry(self, name: str) -> RegistryEntry[T]:
        """The entry for ``name``; raises :class:`UnknownNameError` listing valid names."""
        self._complete()
        if name in self._entries:
            return self._entries[name]
        if self.prefix_sep and self.prefix_sep in name:
            head = name.split(self.prefix_sep, 1)[0]
            if head in self._entries and self._entries[head].meta.get("parametric"):
                return self._entries[head]
        choices = ", ".join(self._display_names())
        raise UnknownNameError(f"unknown {self.kind} '{name}'; choose one of: {choices}")

    def _display_names(self) -> list[str]:
        return [
            f"{n}{self.prefix_sep}<name>" if self._entries[n].meta.get("parametric") else n
            for n in self.names()
        ]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the entry ``name`` with ``kwargs`` after checking them against its signature."""
        entry = self.entry(name)
        if self.prefix_sep and name != entry.name:
            kwargs = {"variant": name.split(self.prefix_sep, 1)[1], **kwargs}
        kwargs = check_kwargs(entry.fn, kwargs, f"{self.kind} '{name}'")
        return entry.fn(**kwargs)


def check_kwargs(
    fn: Callable[..., Any], kwargs: dict[str, Any], what: str, reserved: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check ``kwargs`` against ``fn``'s signature: names, then types from its annotations.

    ``reserved`` names are filled by the caller (``split``, ``params``), never by users.

    Returns:
        The options converted to the annotated types (a YAML list becomes a tuple where
        the parameter is a tuple, ``"3"`` stays an error for an ``int``).

    Raises:
        ConfigError: one line naming the option, the problem and the valid choices.
    """
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [
            n
            for n, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and n not in reserved
        ]
        for key in kwargs:
            if key not in accepted:
                valid = ", ".join(accepted) or "none"
                raise ConfigError(f"{what} has no option '{key}'; valid options: {valid}")
    checked = dict(kwargs)
    for key, value in kwargs.items():
        adapter = _adapter(fn, key)
        if adapter is None:
            continue
        try:
            checked[key] = adapter.validate_python(value)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]["msg"]
            raise ConfigError(f"{what} option '{key}': {problem} (got {value!r})") from None
    return checked


@functools.lru_cache(maxsize=1024)
def _adapter(fn: Callable[..., Any], name: str) -> TypeAdapter[Any] | None:
    """A pydantic validator for parameter ``name`` of ``fn``; None when not annotated."""
    try:
        # a class's parameters are annotated on its __init__
        target = getattr(fn, "__init__") if isinstance(fn, type) else fn  # noqa: B009
        hint = typing.get_type_hints(target).get(name)
        return None if hint is None else TypeAdapter(hint)
    except Exception:  # unresolvable or non-pydantic annotation: names are still checked
        return None
