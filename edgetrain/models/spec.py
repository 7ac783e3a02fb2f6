"""Model specs: wherever a model is named, a zoo name, ``path/to/file.py:callable`` or
``package.module:callable``.

The callable is called with the model's options as keyword arguments and must return an
``nn.Module``. A file spec is resolved to its absolute path, and its content hash is
kept, so a run reopened later (resume, compress, export, report) builds the same model
from the same file, and says so when the file changed since.

Example:
    >>> resolve_model("vgg_small").kind
    'zoo'
    >>> spec = resolve_model("torch.nn:Identity")
    >>> spec.kind, spec.text, type(spec.build()).__name__
    ('module', 'torch.nn:Identity', 'Identity')
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrain._callables import file_digest, import_callable
from edgetrain.errors import ConfigError, UnknownNameError, one_line
from edgetrain.models.registry import MODELS
from edgetrain.registry import check_kwargs

__all__ = ["ModelSpec", "create", "file_digest", "is_model_spec", "resolve_model"]


def is_model_spec(text: str) -> bool:
    """Whether ``text`` names a callable in a file or module rather than a zoo entry."""
    return ":" in text


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model spec.

    Attributes:
        text: the spec in its resolved form (zoo name, absolute ``file.py:fn`` or
            ``module:fn``); what run configs and checkpoints record.
        kind: ``"zoo"``, ``"file"`` or ``"module"``.
        fn: the callable that builds the model.
        path: the file of a file spec.
        sha256: that file's content hash when it was resolved.
    """

    text: str
    kind: str
    fn: Callable[..., Any]
    path: Path | None = None
    sha256: str | None = None

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` checked against the callable's signature (one line per mistake)."""
        return check_kwargs(self.fn, options, f"model '{self.text}'")

    def build(self, **options: Any) -> nn.Module:
        """Call the spec's callable with ``options``; it must return an ``nn.Module``."""
        options = self.check_options(options)
        if self.kind == "zoo":
            return MODELS.create(self.text, **options)
        try:
            model = self.fn(**options)
        except Exception as exc:
            why = f"{type(exc).__name__}: {one_line(exc)}"
            raise ConfigError(f"model '{self.text}' failed to build: {why}") from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model '{self.text}' returned a {type(model).__name__}, not a "
                "torch.nn.Module; return the network from the callable"
            )
        return model

    def warn_if_changed(self, recorded: str | None) -> None:
        """Warn, naming the file, when its content differs from the ``recorded`` hash."""
        if self.path is not None and recorded and recorded != self.sha256:
            warnings.warn(
                f"model file '{self.path}' changed since the run was made (sha256 "
                f"{recorded[:12]} -> {(self.sha256 or '')[:12]}); the model is built from "
                "the file as it is now",
                UserWarning,
                stacklevel=3,
            )


def resolve_model(text: str) -> ModelSpec:
    """Resolve a model spec (see the module docstring).

    Raises:
        ConfigError: an unknown zoo name, a missing file or module, a missing or
            non-callable attribute, or a file that fails to import, in one line.
    """
    if not is_model_spec(text):
        try:
            entry = MODELS.entry(text)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{exc}; or name your own: path/to/file.py:fn") from None
        return ModelSpec(text, "zoo", entry.fn)
    found = import_callable(text, "model spec")
    return ModelSpec(found.text, found.kind, found.fn, found.path, found.sha256)


def create(name: str, *, device: str | torch.device | None = None, **kwargs: Any) -> nn.Module:
    """Build a model from a zoo name or a model spec.

    Args:
        name: a zoo name (``edgetrain models`` lists them), ``path/to/file.py:fn`` or
            ``package.module:fn``.
        device: build directly on this device; ``"meta"`` allocates no memory (analysis).
        **kwargs: model options such as ``in_channels`` and ``num_classes``.

    The model carries ``edgetrain_architecture`` (``{"name", "options"}``), which the
    Trainer stores in its checkpoints, so the model reloads from them alone.

    Example:
        >>> m = create("resnet20", num_classes=10, device="meta")
        >>> sum(p.numel() for p in m.parameters())
        272474
    """
    spec = resolve_model(name)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = spec.build(**kwargs)
    # What rebuilds it: a Trainer given this model records it in its checkpoints, so a
    # run trained from Python reopens from the command line too.
    record = {"name": spec.text, "options": dict(kwargs)}
    if spec.sha256:
        record["sha256"] = spec.sha256
    setattr(model, "edgetrain_architecture", record)  # noqa: B010
    return model
