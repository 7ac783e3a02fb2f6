"""Selecting a model's modules by name (exact names, shell-style globs, ``re:<regex>``) or
by kind (``type:Conv2d``).

Shared by everything that names layers (freezing, checkpoint exclusion, cost-model plans).
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterator, Sequence

from torch import nn

from edgetrain.errors import EdgetrainError

__all__ = ["eval_mode", "param_owners", "select_modules", "structure_key", "train_mode"]


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``model`` in eval mode; on exit every module gets back its own mode (a model in
    training mode with a frozen, evaluating batch norm stays so, which
    ``model.train(was_training)`` would undo)."""
    return _in_mode(model, training=False)


def train_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``model`` in training mode; on exit every module gets back its own mode."""
    return _in_mode(model, training=True)


@contextlib.contextmanager
def _in_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, was in modes:
            module.training = was


def structure_key(model: nn.Module, input_shape: Sequence[int]) -> tuple[object, ...]:
    """What one traced forward of ``model`` depends on: the input shape, the modules (by
    name, type and identity) and the weight shapes; a trace cached under it stays valid
    until pruning or growth changes one of them."""
    return (
        tuple(input_shape),
        tuple((n, type(m), id(m)) for n, m in model.named_modules()),
        tuple((n, tuple(t.shape)) for n, t in model.named_parameters()),
    )


def param_owners(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in registration order."""
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(False))]


def select_modules(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Modules whose name equals a pattern, matches a shell-style glob (``layer1.*.conv1``;
    ``*`` also matches dots, as in :mod:`fnmatch`) or a ``re:<regex>`` pattern (fullmatch),
    or whose class (or a base class) is called as a ``type:<ClassName>`` pattern says
    (``type:Linear`` also selects ``nn.MultiheadAttention``'s ``out_proj``).

    Raises:
        EdgetrainError: naming a pattern that matches nothing (or is not a valid regex),
            with the names of the layers that hold parameters.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> [n for n, _ in select_modules(net, ["re:[02]"])]
        ['0', '2']
        >>> [n for n, _ in select_modules(net, ["[!1]"])]
        ['0', '2']
        >>> [n for n, _ in select_modules(net, ["type:Linear"])]
        ['0', '2']
    """
    named = dict(model.named_modules())
    chosen: dict[str, nn.Module] = {}
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                rx = re.compile(pattern[3:])
            except re.error as exc:
                raise EdgetrainError(
                    f"layer pattern '{pattern}' is not a valid regex ({exc})"
                ) from None
            hits = {n: m for n, m in named.items() if n and rx.fullmatch(n)}
        elif pattern.startswith("type:"):
            kind = pattern[5:]
            hits = {
                n: m
                for n, m in named.items()
                if n and any(c.__name__ == kind for c in type(m).__mro__)
            }
        elif any(c in pattern for c in "*?["):  # module names never hold these characters
            hits = {n: m for n, m in named.items() if n and fnmatch.fnmatchcase(n, pattern)}
        else:
            hits = {pattern: named[pattern]} if pattern and pattern in named else {}
        if not hits:
            layers = ", ".join(param_owners(model))
            raise EdgetrainError(
                f"layer pattern '{pattern}' matches no module; layers with parameters: {layers}"
            )
        chosen.update(hits)
    return list(chosen.items())
