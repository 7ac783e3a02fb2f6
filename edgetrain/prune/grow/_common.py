"""What widening and deepening share: init checks, module lookup, the dependency graph,
fresh layers shaped like old ones, and random draws on the generator's device."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.prune.graph import build_graph, dependency_graph
from edgetrain.prune.graph import example_input as default_input

GROW_INITS = ("net2net", "random")
DEEPEN_KINDS = ("auto", "conv", "residual")

_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm
_BNS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# Standard deviation of the fresh consumer weights of the random-init control.
_RANDOM_CONSUMER_STD = 0.01


# --------------------------------------------------------------------------- helpers


def _check_init(init: str) -> None:
    if init not in GROW_INITS:
        raise EdgetrainError(f"unknown grow init '{init}'; choose one of: {', '.join(GROW_INITS)}")


def _module(model: nn.Module, name: str, what: str) -> nn.Module:
    named = dict(model.named_modules())
    if not name or name not in named:
        layers = ", ".join(n for n, m in named.items() if isinstance(m, (*_CONVS, nn.Linear)))
        raise EdgetrainError(f"{what}: the model has no layer '{name}'; choose one of: {layers}")
    return named[name]


def _names(model: nn.Module) -> dict[int, list[str]]:
    """Every name under which each module is registered (a module may be shared)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
    return names


def _graph(
    model: nn.Module, example_input: torch.Tensor | None, what: str, channels: bool = True
) -> Any:
    """The dependency graph of ``model`` (:func:`~edgetrain.prune.graph.build_graph`, or
    with ``channels=False`` one that only says which module follows which), with ``what``
    in front of a refusal."""
    try:
        example = default_input(model, example_input)
        return (build_graph if channels else dependency_graph)(model, example)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def _copy_flags(new: nn.Module, old: nn.Module) -> nn.Module:
    new.train(old.training)
    for (_, p_new), (_, p_old) in zip(
        new.named_parameters(recurse=False), old.named_parameters(recurse=False), strict=True
    ):
        p_new.requires_grad_(p_old.requires_grad)
    return new


def _conv_like(
    old: nn.Module, in_c: int, out_c: int, weight: torch.Tensor, bias: torch.Tensor | None
) -> nn.Module:
    """A conv/linear of the same kind and hyper-parameters as ``old`` with new weights."""
    factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(in_c, out_c, bias=bias is not None, **factory)
    else:
        base = next(c for c in _CONVS if isinstance(old, c))
        new = base(
            in_c,
            out_c,
            old.kernel_size,  # type: ignore[arg-type]
            stride=old.stride,  # type: ignore[arg-type]
            padding=old.padding,  # type: ignore[arg-type]
            dilation=old.dilation,  # type: ignore[arg-type]
            groups=1,
            bias=bias is not None,
            padding_mode=old.padding_mode,  # type: ignore[arg-type]
            **factory,
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return _copy_flags(new, old)


def _bn_like(old: nn.Module, tensors: dict[str, torch.Tensor | None], num: int) -> nn.Module:
    base = next(c for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) if isinstance(old, c))
    ref = next(t for t in tensors.values() if t is not None)
    new = base(
        num,
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
        device=ref.device,
        dtype=ref.dtype,
    )
    with torch.no_grad():
        for key, value in tensors.items():
            if value is not None:
                getattr(new, key).copy_(value)
        if old.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(old.num_batches_tracked)
    return _copy_flags(new, old)


# ------------------------------------------------------------------------------ widen


def _draw_device(generator: torch.Generator | None) -> torch.device:
    """Random numbers are drawn where the generator lives (the CPU by default)."""
    return generator.device if generator is not None else torch.device("cpu")


def _kaiming(
    like: torch.Tensor, generator: torch.Generator | None, mode: str = "fan_in"
) -> torch.Tensor:
    """Kaiming-normal values (ReLU gain) with ``like``'s shape, dtype and device."""
    t = torch.empty(like.shape, dtype=like.dtype, device=_draw_device(generator))
    nn.init.kaiming_normal_(t, mode=mode, nonlinearity="relu", generator=generator)
    return t.to(like.device)
