"""Growth operations by name, as configs name them (``model.grow: [{op: widen, ...}]``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from edgetrain.errors import ConfigError
from edgetrain.registry import Registry, check_kwargs

__all__ = ["GROW_OPS", "apply_grow_ops"]

GROW_OPS: Registry[nn.Module] = Registry("grow op")
"""Each entry takes ``(model, *, init, **options)`` and changes the model in place."""


def apply_grow_ops(
    model: nn.Module, ops: Sequence[Mapping[str, Any]], init: str = "net2net"
) -> nn.Module:
    """Apply growth operations in order, e.g. ``[{"op": "widen", "layer": "conv2",
    "width": 32}, {"op": "deepen", "after": "layer2.1"}]``, in place.

    Args:
        model: the model to grow.
        ops: operation records (``op`` plus that operation's options).
        init: ``"net2net"`` (function-preserving) or ``"random"`` (fresh channels).

    Raises:
        ConfigError: an unknown op or option, one line naming it and the choices.
    """
    for i, record in enumerate(ops):
        options = dict(record)
        name = str(options.pop("op", None))
        if name not in GROW_OPS:
            raise ConfigError(
                f"grow[{i}]: unknown op '{name}'; choose one of: {', '.join(GROW_OPS.names())}"
            )
        fn = GROW_OPS.entry(name).fn
        options = check_kwargs(fn, options, f"grow[{i}] op '{name}'", reserved=("model", "init"))
        fn(model, init=init, **options)
    return model
