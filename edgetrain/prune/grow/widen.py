"""Net2Net widening: more output channels in a conv/linear layer, same function.

Chen, Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer" (2016).
A mapping ``g`` sends each new channel to a uniformly drawn old one; producers and the
following batch-norm are copied by ``g``, and every consumer's input weights for a
channel are divided by the number of channels that now carry it. Channels coupled
through a residual add share one ``g`` (Torch-Pruning's dependency graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.models.surgery import ChannelBias, set_module
from edgetrain.prune.graph import MIXING_NORMS, untraceable
from edgetrain.prune.grow._common import (
    _BN,
    _CONVS,
    _RANDOM_CONSUMER_STD,
    _bn_like,
    _check_init,
    _conv_like,
    _draw_device,
    _graph,
    _kaiming,
    _module,
    _names,
)
from edgetrain.prune.grow.ops import GROW_OPS

__all__ = ["widen"]


@dataclass
class _Layout:
    """How one coupled tensor dimension grows.

    ``index[p]`` is the old position that new position ``p`` copies; ``owner[p]`` is the
    root channel (``0 .. new_width-1``) position ``p`` belongs to, or -1 for positions
    outside the group (another branch of a concatenation, say).
    """

    index: torch.Tensor
    owner: torch.Tensor


def _layout(
    positions: Sequence[int],
    roots: Sequence[int] | None,
    size: int,
    g: torch.Tensor,
    n: int,
    where: str,
) -> _Layout:
    q = len(g) - n
    if roots is None or len(roots) != len(positions) or any(r is None for r in roots):
        raise EdgetrainError(
            f"widen: cannot map the channels of {where} to the widened layer "
            "(no channel correspondence in the dependency graph); widen another layer"
        )
    by_root: dict[int, set[int]] = {}
    for p, r in zip(positions, roots, strict=True):
        by_root.setdefault(int(r), set()).add(int(p))
    k = len(by_root.get(0, ()))
    base = min(by_root.get(0, {0}))
    contiguous = set(by_root) == set(range(n)) and all(
        sorted(by_root[r]) == list(range(base + r * k, base + (r + 1) * k)) for r in range(n)
    )
    if not contiguous or k == 0:
        raise EdgetrainError(
            f"widen: the channels of {where} are not laid out channel by channel "
            "(only flatten/concat-style layouts are supported); widen another layer"
        )
    end = base + n * k
    new_src = (g[n:].view(-1, 1) * k + base + torch.arange(k)).reshape(-1)
    index = torch.cat([torch.arange(end), new_src, torch.arange(end, size)])
    owner = torch.cat(
        [
            torch.full((base,), -1),
            torch.arange(n + q).repeat_interleave(k),
            torch.full((size - end,), -1),
        ]
    )
    return _Layout(index, owner)


def widen(
    model: nn.Module,
    layer_name: str,
    new_width: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    init: str = "net2net",
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Give conv/linear ``layer_name`` ``new_width`` output channels, in place (Net2WiderNet).

    Channel ``j`` of the widened layer copies old channel ``g(j)``: ``g(j) = j`` for the old
    channels and a uniformly drawn old channel for each new one. Producers (conv/linear
    kernels and bias, the batch-norm's gamma, beta, running mean and running variance)
    are gathered by ``g``; consumers' input weights are gathered by ``g`` and divided by
    ``count(g(j)) = |{i : g(i) = g(j)}|``, so every consumer sees the same sum. Every layer
    tied to ``layer_name`` (all producers, batch-norms and consumers joined at a residual
    add, a linear after a flatten, where one channel is ``H*W`` input features) is found
    with Torch-Pruning's dependency graph and grown with the same ``g``.

    A bare per-channel parameter on the tied tensor (an offset or scale used outside a
    layer) is gathered by ``g`` as well. Ops that mix channels other than convs and
    linears (a softmax over channels, say) are not detected; group/layer norms are
    refused.

    Modules are rebuilt with the same hyper-parameters (stride, padding, dilation, bias,
    eps, momentum, ``requires_grad``, train/eval mode) and set under their old names, so
    state-dict keys stay the same and only shapes change (a checkpoint of a widened model
    loads into a model rebuilt from the shapes of its state dict). Build the optimizer
    afterwards.

    Args:
        model: the network; modified in place.
        layer_name: a conv (groups 1) or linear layer with a consumer inside the model
            (not the output layer).
        new_width: the new number of output channels (>= the current number; equal is
            a no-op).
        noise: standard deviation, relative to the standard deviation of each producer's
            weight, of Gaussian noise added to the copied kernels of the new channels to
            break their symmetry with the originals (then the function is only close).
        generator: random source for ``g``, the noise and the random init.
        init: ``"net2net"`` (function preserving) or ``"random"``: the control that grows
            the same shapes with fresh weights (Kaiming-normal producer rows, zero bias,
            unit batch-norm, consumer columns normal with std 0.01, old consumer weights
            not rescaled), which changes the function.
        example_input: one input batch to trace the model with; defaults to zeros of
            shape ``(1, *model.input_shape)``.

    Returns:
        The same model object.

    Raises:
        EdgetrainError: for an unknown or unsupported layer, a width below the current
            one, grouped convolutions or unsupported layers among the tied ones, or a
            model with a channel map the dependency graph cannot follow (a ``resnet_cifar``
            with ``shortcut="pad"``).

    Example:
        >>> import torch
        >>> from edgetrain.models import create
        >>> net = create("vgg_small").eval()
        >>> x = torch.randn(1, 3, 32, 32)
        >>> y = net(x)
        >>> widen(net, "conv6", 96).conv6.out_channels, net.fc.in_features
        (96, 1536)
        >>> torch.allclose(net(x), y, rtol=1e-4, atol=1e-5)
        True
    """
    root, n = _widenable(model, layer_name, new_width, noise, init)
    if new_width == n:
        return model
    DG = _graph(model, example_input, f"widen '{layer_name}'")
    fn = DG.get_pruner_of_module(root).prune_out_channels
    try:
        group = DG.get_pruning_group(root, fn, idxs=list(range(n)))
    except (IndexError, KeyError, RuntimeError) as exc:
        raise EdgetrainError(f"widen: '{layer_name}': {untraceable(model, exc)}") from exc
    drawn = torch.randint(
        0, n, (new_width - n,), generator=generator, device=_draw_device(generator)
    )
    g = torch.cat([torch.arange(n), drawn.cpu()])
    count = torch.bincount(g, minlength=n)  # replication count per old channel
    names = _names(model)
    param_names: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        param_names.setdefault(id(param), []).append(pname)
    members = _tied_members(DG, group, g, n, names, param_names, layer_name)
    device = root.weight.device
    g_dev, count_dev = g.to(device), count.to(device)
    with torch.no_grad():
        for entry in members.values():
            old = entry["module"]
            if "dim" in entry:  # a bare per-channel parameter: gathered by g
                index = entry["out"].index.to(old.device)
                new_p = nn.Parameter(old.detach().index_select(entry["dim"], index))
                new_p.requires_grad_(old.requires_grad)
                for pname in param_names[id(old)]:
                    owner, _, attr = pname.rpartition(".")
                    setattr(model.get_submodule(owner) if owner else model, attr, new_p)
                continue
            new = _grown(
                old, entry["out"], entry["in"], g_dev, count_dev, n, noise, init, generator
            )
            for name in names[id(old)]:
                set_module(model, name, new)
    return model


def _widenable(
    model: nn.Module, layer_name: str, new_width: int, noise: float, init: str
) -> tuple[nn.Module, int]:
    """The layer to widen and its current width, after checking the request."""
    _check_init(init)
    root = _module(model, layer_name, "widen")
    if not isinstance(root, (*_CONVS, nn.Linear)):
        raise EdgetrainError(
            f"widen: layer '{layer_name}' is a {type(root).__name__}; "
            "name a convolution or linear layer"
        )
    n = root.out_features if isinstance(root, nn.Linear) else root.out_channels
    if new_width < n:
        raise EdgetrainError(
            f"widen: new_width {new_width} is below the {n} channels '{layer_name}' has; "
            "widen only grows (prune to shrink)"
        )
    if noise < 0:
        raise EdgetrainError(f"widen: noise must be >= 0, got {noise}")
    if isinstance(root, _CONVS) and root.groups != 1:
        raise EdgetrainError(
            f"widen: '{layer_name}' is a grouped convolution (groups={root.groups}); "
            "only groups=1 convolutions can be widened"
        )
    return root, int(n)


def _tied_members(
    DG: Any,
    group: Any,
    g: torch.Tensor,
    n: int,
    names: dict[int, list[str]],
    param_names: dict[int, list[str]],
    layer_name: str,
) -> dict[int, dict[str, Any]]:
    """Every module (and bare parameter) tied to the widened channels, with the layout of
    its output and input channels: ``{id: {"module", "out": _Layout | None, "in": ...}}``.

    Raises:
        EdgetrainError: a tied module that widen cannot grow, or a layer whose channels
            reach the model's output unconsumed.
    """
    members: dict[int, dict[str, Any]] = {}
    for item in group.items:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if isinstance(module, nn.Parameter | ChannelBias):  # a per-channel offset or scale
            param = module.bias if isinstance(module, ChannelBias) else module
            _add_parameter(members, param, item, g, n, param_names, layer_name)
            continue
        if not isinstance(module, nn.Module):
            raise EdgetrainError(
                f"widen: '{layer_name}' is tied to a {type(module).__name__}, which widen "
                "cannot grow; widen another layer"
            )
        if isinstance(module, MIXING_NORMS):
            raise EdgetrainError(
                f"widen: '{layer_name}' is tied to a {type(module).__name__}, which "
                "normalises across channels (copies would change its statistics); "
                "widen another layer"
            )
        owns_state = any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        )
        if not owns_state:  # ReLU, add, pooling, flatten, concat...: nothing to grow
            continue
        where = f"'{names.get(id(module), [type(module).__name__])[0]}'"
        if isinstance(module, _CONVS) and module.groups != 1:
            raise EdgetrainError(
                f"widen: '{layer_name}' is tied to the grouped convolution {where} "
                f"(groups={module.groups}); only groups=1 convolutions can be widened"
            )
        if isinstance(module, _BN):
            side, dim_size = "out", module.num_features
        elif isinstance(module, (*_CONVS, nn.Linear)):
            out = DG.is_out_channel_pruning_fn(dep.handler)
            side = "out" if out else "in"
            dim_size = module.weight.shape[0 if out else 1]
        else:
            raise EdgetrainError(
                f"widen: '{layer_name}' is tied to {where}, a {type(module).__name__}; "
                "widen supports convolutions, linears and batch-norms only"
            )
        entry = members.setdefault(id(module), {"module": module, "out": None, "in": None})
        if entry[side] is None:
            roots = getattr(item, "root_idxs", None)
            entry[side] = _layout(list(idxs), roots, dim_size, g, n, where)
    if not any(e["in"] is not None for e in members.values()):
        raise EdgetrainError(
            f"widen: '{layer_name}' feeds the model's output directly; widening it would "
            "change the output size; widen a hidden layer"
        )
    return members


def _add_parameter(
    members: dict[int, dict[str, Any]],
    param: nn.Parameter,
    item: Any,
    g: torch.Tensor,
    n: int,
    param_names: dict[int, list[str]],
    layer_name: str,
) -> None:
    """Record a bare parameter tied to the group: one channel dimension, values per channel.

    Whatever it does per channel (add an offset, scale), the new channels must do what
    their source channels do, so it is gathered by ``g`` (also under ``init="random"``).
    """
    dims = [d for d, s in enumerate(param.shape) if s != 1]
    where = f"'{param_names.get(id(param), ['?'])[0]}'"
    if id(param) not in param_names or len(dims) != 1:
        raise EdgetrainError(
            f"widen: '{layer_name}' is tied to the parameter {where} of shape "
            f"{tuple(param.shape)}, which widen cannot grow; widen another layer"
        )
    if id(param) not in members:
        layout = _layout(
            list(item.idxs), getattr(item, "root_idxs", None), param.shape[dims[0]], g, n, where
        )
        members[id(param)] = {"module": param, "out": layout, "in": None, "dim": dims[0]}


def _randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> Any:
    t = torch.randn(*shape, generator=generator, dtype=like.dtype, device=_draw_device(generator))
    return t.to(like.device)


def _grown(
    old: nn.Module,
    out: _Layout | None,
    inp: _Layout | None,
    g: torch.Tensor,
    count: torch.Tensor,
    n: int,
    noise: float,
    init: str,
    generator: torch.Generator | None,
) -> nn.Module:
    """``old`` rebuilt with its output (``out``) and/or input (``inp``) dimension grown."""
    dev = g.device
    if isinstance(old, _BN):
        assert out is not None
        index, new_rows = out.index.to(dev), (out.owner >= n).to(dev)
        fresh = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        tensors: dict[str, torch.Tensor | None] = {}
        for key, value in fresh.items():
            t = getattr(old, key)
            if t is None:
                tensors[key] = None
                continue
            t = t.detach().index_select(0, index)
            if init == "random":
                t[new_rows] = value
            tensors[key] = t
        return _bn_like(old, tensors, len(index))

    weight = old.weight.detach()
    bias = old.bias.detach() if old.bias is not None else None
    if out is not None:
        index, new_rows = out.index.to(dev), (out.owner >= n).to(dev)
        weight = weight.index_select(0, index)
        bias = bias.index_select(0, index) if bias is not None else None
        if init == "random":
            weight[new_rows] = _kaiming(weight, generator)[new_rows]
            if bias is not None:
                bias[new_rows] = 0.0
        elif noise > 0 and bool(new_rows.any()):
            scale = noise * float(old.weight.detach().std()) if old.weight.numel() > 1 else noise
            rows = weight[new_rows]
            weight[new_rows] = rows + scale * _randn(rows.shape, rows, generator)
    if inp is not None:
        index, owner = inp.index.to(dev), inp.owner.to(dev)
        weight = weight.index_select(1, index)
        if init == "random":
            new_cols = owner >= n
            cols = weight[:, new_cols]
            weight[:, new_cols] = _RANDOM_CONSUMER_STD * _randn(cols.shape, cols, generator)
        else:
            tied = owner >= 0
            divisor = torch.ones(len(index), dtype=weight.dtype, device=dev)
            divisor[tied] = count[g[owner[tied]]].to(weight.dtype)
            weight = weight / divisor.view(1, -1, *([1] * (weight.dim() - 2)))
    return _conv_like(old, weight.shape[1], weight.shape[0], weight, bias)


# ----------------------------------------------------------------------------- deepen


@GROW_OPS.register("widen")
def _widen_op(
    model: nn.Module, *, init: str, layer: str, width: int, noise: float = 0.0
) -> nn.Module:
    """``model.grow: [{op: widen, layer: NAME, width: N}]``."""
    module = _module(model, layer, "widen")
    if not isinstance(module, (*_CONVS, nn.Linear)):
        weights = [n for n, m in model.named_modules() if isinstance(m, (*_CONVS, nn.Linear))]
        raise ConfigError(
            f"widen '{layer}': it is a {type(module).__name__}, which has no channels of its "
            f"own; name a convolution or linear layer ({', '.join(weights[:6])}, ...)"
        )
    current = int(module.weight.shape[0])
    if width <= current:
        raise ConfigError(
            f"widen '{layer}' to {width}: it already has {current} channels; "
            f"give a width above {current}"
        )
    return widen(model, layer, width, noise=noise, init=init)
