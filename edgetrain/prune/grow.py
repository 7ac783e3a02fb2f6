"""Net2Net: grow a trained network wider or deeper without changing what it computes.

Chen, Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer" (2016).

- :func:`widen` adds output channels to a conv/linear layer. A mapping ``g`` sends each
  new channel to a uniformly drawn old one (old channels map to themselves); producers
  (kernels, bias) and the following batch-norm (gamma, beta, running mean and variance)
  are copied by ``g``, and every consumer's input weights for a channel are divided by
  the number of channels that now carry the same signal. Channels coupled through a
  residual add (or any other tie) share one ``g``: the coupled layers come from
  Torch-Pruning's dependency graph, so any branching net works without per-architecture
  lists.
- :func:`deepen` inserts an identity-initialised conv + batch-norm after a layer, or an
  identity residual block (last batch-norm gamma zero) after a residual block.

Both are function preserving in eval mode (outputs agree to float rounding); in training
mode batch-norm uses batch statistics, so the grown layers are only approximately the
identity there. ``init="random"`` is the control: the same new shapes with fresh
weights, which does change the function.

Grown layers are new module objects: build the optimizer (and any DDP wrapper) after
growing. Forward hooks on replaced modules are not carried over.

Example:
    >>> import torch
    >>> from edgetrain.models import create
    >>> net = create("resnet20", num_classes=10).eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> before = net(x)
    >>> _ = widen(net, "layer2.0.conv1", 48, generator=torch.Generator().manual_seed(0))
    >>> _ = deepen(net, "layer3.2")
    >>> torch.allclose(net(x), before, rtol=1e-4, atol=1e-5)
    True
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.models.resnet import BasicBlock
from edgetrain.models.surgery import ChannelBias, register_grow_op, set_module
from edgetrain.prune.graph import build_graph, dependency_graph
from edgetrain.prune.graph import example_input as default_input

__all__ = ["GROW_INITS", "deepen", "widen"]

GROW_INITS = ("net2net", "random")
DEEPEN_KINDS = ("auto", "conv", "residual")

_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm
_BNS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# Normalisations whose statistics mix channels: replicated channels would change them.
_MIXING_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
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
    if new_width == n:
        return model
    q = new_width - n
    if isinstance(root, _CONVS) and root.groups != 1:
        raise EdgetrainError(
            f"widen: '{layer_name}' is a grouped convolution (groups={root.groups}); "
            "only groups=1 convolutions can be widened"
        )

    DG = _graph(model, example_input, f"widen '{layer_name}'")
    fn = DG.get_pruner_of_module(root).prune_out_channels
    group = DG.get_pruning_group(root, fn, idxs=list(range(n)))

    device = root.weight.device
    drawn = torch.randint(0, n, (q,), generator=generator, device=_draw_device(generator))
    g = torch.cat([torch.arange(n), drawn.cpu()])
    count = torch.bincount(g, minlength=n)  # replication count per old channel
    names = _names(model)
    param_names: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        param_names.setdefault(id(param), []).append(pname)

    # (module id) -> {"module", "out": _Layout | None, "in": _Layout | None}
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
        if isinstance(module, _MIXING_NORMS):
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


def _draw_device(generator: torch.Generator | None) -> torch.device:
    """Random numbers are drawn where the generator lives (the CPU by default)."""
    return generator.device if generator is not None else torch.device("cpu")


def _randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> Any:
    t = torch.randn(*shape, generator=generator, dtype=like.dtype, device=_draw_device(generator))
    return t.to(like.device)


def _kaiming(
    like: torch.Tensor, generator: torch.Generator | None, mode: str = "fan_in"
) -> torch.Tensor:
    """Kaiming-normal values (ReLU gain) with ``like``'s shape, dtype and device."""
    t = torch.empty(like.shape, dtype=like.dtype, device=_draw_device(generator))
    nn.init.kaiming_normal_(t, mode=mode, nonlinearity="relu", generator=generator)
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


def _rectified_moments(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``relu(z)`` for ``z ~ N(mean, std**2)``, per channel."""
    std = std.clamp_min(1e-12)
    a = mean / std
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    m1 = mean * cdf + std * pdf
    m2 = (mean * mean + std * std) * cdf + mean * std * pdf
    return m1, (m2 - m1 * m1).clamp_min(0.0)


def _identity_layer(
    layer: nn.Module, channels: int, bias: bool, init: str, generator: torch.Generator | None
) -> nn.Module:
    """A stride-1 conv (centred identity kernel, padding k//2) or linear (identity matrix)."""
    ref = layer.weight
    factory = {"device": ref.device, "dtype": ref.dtype}
    if isinstance(layer, nn.Linear):
        new: nn.Module = nn.Linear(channels, channels, bias=bias, **factory)
    else:
        base = next(c for c in _CONVS if isinstance(layer, c))
        kernel = tuple(k if k % 2 == 1 else 3 for k in layer.kernel_size)
        new = base(
            channels,
            channels,
            kernel,
            padding=tuple(k // 2 for k in kernel),
            bias=bias,
            **factory,
        )
    with torch.no_grad():
        if init == "random":
            new.weight.copy_(_kaiming(new.weight, generator))
        else:
            new.weight.zero_()
            centre = tuple(k // 2 for k in new.weight.shape[2:])
            eye = torch.arange(channels)
            new.weight[(eye, eye, *centre)] = 1.0
        if bias:
            new.bias.zero_()
    return new


def _followers(DG: Any, module: nn.Module) -> list[Any]:
    node = DG.module2node.get(module)
    return [] if node is None else list(node.outputs)


def _is_relu(node: Any) -> bool:
    return type(getattr(node, "grad_fn", None)).__name__.startswith("ReluBackward")


def _deepen_layer(
    model: nn.Module,
    after: str,
    layer: nn.Module,
    batch_norm: bool | None,
    init: str,
    generator: torch.Generator | None,
    example_input: torch.Tensor | None,
) -> nn.Module:
    if isinstance(layer, _CONVS) and layer.groups != 1:
        raise EdgetrainError(
            f"deepen: '{after}' is a grouped convolution (groups={layer.groups}); "
            "name a groups=1 convolution"
        )
    what = f"deepen after '{after}'"
    # Deepening keeps every channel where it is: only which module follows which is read.
    DG = _graph(model, example_input, what, channels=False)
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if layer not in DG.module2node:
        raise EdgetrainError(f"{what}: the forward pass never calls '{after}'; name a used layer")
    outs = _followers(DG, layer)
    tail = layer
    bn = None
    if len(outs) == 1 and isinstance(outs[0].module, _BN):
        bn = outs[0].module
        if bn.num_features == channels:
            tail = bn
            outs = _followers(DG, bn)
        else:
            bn = None
    relu = len(outs) == 1 and _is_relu(outs[0])
    use_bn = bn is not None if batch_norm is None else batch_norm

    new_layer = _identity_layer(layer, channels, not use_bn, init, generator)
    parts: OrderedDict[str, nn.Module] = OrderedDict(base=tail)
    if relu:
        parts["relu"] = nn.ReLU(inplace=True)
    parts["fc" if isinstance(layer, nn.Linear) else "conv"] = new_layer
    if use_bn:
        spatial = 1 if isinstance(layer, nn.Linear) else layer.weight.dim() - 2
        norm = _BNS[max(spatial, 1)](
            channels,
            eps=bn.eps if bn is not None else 1e-5,
            momentum=bn.momentum if bn is not None else 0.1,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        if init != "random":
            _identity_batch_norm(norm, bn, relu)
        parts["bn"] = norm
    block = nn.Sequential(parts)
    block.train(tail.training)
    for name in _names(model)[id(tail)]:
        set_module(model, name, block)
    return model


def _identity_batch_norm(norm: nn.Module, prev: nn.Module | None, relu: bool) -> None:
    """Set ``norm`` to the identity in eval mode: gamma = sqrt(var + eps), beta = mean.

    The running statistics are an estimate of what the new batch-norm will see: the
    previous batch-norm's output is ``N(beta, gamma**2)`` per channel (exactly so when its
    running statistics match the data), rectified when the inserted ReLU comes first.
    Eval mode is the identity for any statistics; good ones keep training mode close.
    """
    with torch.no_grad():
        if prev is not None and prev.affine:
            mean, std = prev.bias.detach().clone(), prev.weight.detach().abs()
            var = std * std
            if relu:
                mean, var = _rectified_moments(mean, std)
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
        norm.weight.copy_(torch.sqrt(norm.running_var + norm.eps))
        norm.bias.copy_(norm.running_mean)


def _deepen_residual(
    model: nn.Module, after: str, block: BasicBlock, init: str, generator: torch.Generator | None
) -> nn.Module:
    parent_name, _, index = after.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential) or list(parent._modules) != [
        str(i) for i in range(len(parent))
    ]:
        raise EdgetrainError(
            f"deepen: residual block '{after}' is not in an index-named nn.Sequential stage; "
            "only blocks of a stage (like 'layer2.1') can be followed by a new block"
        )
    convs = [block._modules[f"conv{j}"] for j in range(1, block.depth + 1)]
    if any(not isinstance(c, nn.Conv2d) or c.groups != 1 for c in convs):
        raise EdgetrainError(
            f"deepen: block '{after}' has been modified (its convs are not plain Conv2d); "
            "name an unmodified residual block"
        )
    widths = [c.out_channels for c in convs]
    kernels = [c.kernel_size[0] for c in convs]
    ref = convs[0].weight
    new = BasicBlock(widths[-1], widths, kernels, 1, 0, "conv1x1").to(ref.device, ref.dtype)
    with torch.no_grad():
        for m in new.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(_kaiming(m.weight, generator, mode="fan_out"))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if init != "random":
            # The residual branch then outputs exactly zero (eval and train mode): the
            # block is relu(0 + x) = x, because x comes out of the previous block's ReLU.
            new._modules[f"bn{new.depth}"].weight.zero_()
    new.train(block.training)
    parent.insert(int(index) + 1, new)
    return model


def deepen(
    model: nn.Module,
    after: str,
    kind: str = "auto",
    init: str = "net2net",
    batch_norm: bool | None = None,
    generator: torch.Generator | None = None,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Insert an identity layer or residual block after ``after``, in place (Net2DeeperNet).

    ``kind="conv"`` (``after`` names a conv or linear layer): a new conv of the same kind
    (same channels in and out, stride 1, the kernel size of ``after`` (odd sizes; an even
    one becomes 3), padding ``k//2``, centred identity kernel; bias only without a
    batch-norm) and, when ``after`` is followed by a batch-norm, a new batch-norm with
    ``gamma' = sqrt(running_var' + eps)``, ``beta' = running_mean'`` so that in eval mode it
    is the identity. Its running statistics are not copied verbatim from the old
    batch-norm (those describe the old conv's output, not the new layer's input) but
    estimated from it: the old batch-norm's output is ``N(beta, gamma**2)`` per channel,
    rectified when a ReLU comes first; eval mode is exact for any statistics, good ones
    keep training mode (batch statistics) close to the identity too. Where it goes:

    - after the layer's batch-norm when one follows it (else after the layer itself);
    - when what follows next is a ReLU, the new layer gets a ReLU in front of it:
      ``bn -> [relu -> conv' -> bn'] -> relu``. Since ``relu(relu(y)) = relu(y)`` and the
      identity conv keeps non-negative inputs as they are, this is exact and gives the new
      layer a non-linearity between it and the old one;
    - otherwise (e.g. the last batch-norm of a residual branch, feeding the add) no ReLU
      is added: ``bn -> [conv' -> bn'] -> add``, which is exact because conv' and bn' are
      the identity.

    Module naming: the module right before the insertion point (the batch-norm, else the
    layer itself), registered as ``T``, is replaced by an ``nn.Sequential`` registered
    under the same name ``T`` with children ``base`` (the original module), ``relu``
    (when added), ``conv`` (``fc`` for a linear) and ``bn`` (when added). E.g. deepening
    after ``conv3`` of ``vgg11_b`` gives ``bn3.base``, ``bn3.relu``, ``bn3.conv``,
    ``bn3.bn``; after ``conv2`` of ``vgg_small`` (no batch-norm) gives ``conv2.base``,
    ``conv2.relu``, ``conv2.conv``. The model's forward calls ``T`` as before.

    ``kind="residual"`` (``after`` names a :class:`~edgetrain.models.resnet.BasicBlock` in
    a stage, like ``layer2.1``): a new block with the same inner widths and kernels,
    stride 1 and an identity shortcut is inserted right after it in its ``nn.Sequential``
    stage; its last batch-norm has gamma = beta = 0, so the block computes
    ``relu(0 + x) = x`` (``x`` is non-negative: it leaves the previous block's ReLU).
    Naming: the stage is re-indexed like ``nn.Sequential.insert`` does (the new block is
    ``layer2.2``, the old ``layer2.2`` becomes ``layer2.3`` ...), so the grown net has the
    names (and the state-dict keys) of ``resnet_cifar`` built with one more block there.

    To reload a grown model's state dict, replay the same ``deepen``/``widen`` calls on a
    fresh model (names are deterministic), then ``load_state_dict``.

    Args:
        model: the network; modified in place.
        after: a conv/linear layer name (``kind="conv"``) or a residual block name.
        kind: ``"auto"`` (residual for a residual block, else conv), ``"conv"``,
            ``"residual"``.
        init: ``"net2net"`` (function preserving) or ``"random"``: the control, same new
            modules with fresh weights (Kaiming-normal convs, unit batch-norms, also for
            the last batch-norm of a new residual block).
        batch_norm: whether the new conv gets a batch-norm; default: when ``after`` has one.
        generator: random source for the fresh weights.
        example_input: one input batch to trace the model with (``kind="conv"`` only);
            defaults to zeros of shape ``(1, *model.input_shape)``.

    Returns:
        The same model object.

    Raises:
        EdgetrainError: for an unknown layer, a kind that does not fit it, or a grouped
            convolution.

    Example:
        >>> import torch
        >>> from edgetrain.models import create
        >>> net = create("vgg11_b").eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> y = net(x)
        >>> [n for n, _ in deepen(net, "conv3").bn3.named_children()]
        ['base', 'relu', 'conv', 'bn']
        >>> torch.allclose(net(x), y, rtol=1e-4, atol=1e-5)
        True
    """
    _check_init(init)
    if kind not in DEEPEN_KINDS:
        raise EdgetrainError(
            f"unknown deepen kind '{kind}'; choose one of: {', '.join(DEEPEN_KINDS)}"
        )
    module = _module(model, after, "deepen")
    if kind == "auto":
        kind = "residual" if isinstance(module, BasicBlock) else "conv"
    if kind == "residual":
        if not isinstance(module, BasicBlock):
            raise EdgetrainError(
                f"deepen: '{after}' is a {type(module).__name__}, not a residual block; "
                "name a block like 'layer2.1' or use kind='conv'"
            )
        return _deepen_residual(model, after, module, init, generator)
    if not isinstance(module, (*_CONVS, nn.Linear)):
        raise EdgetrainError(
            f"deepen: '{after}' is a {type(module).__name__}; name a convolution, a linear "
            "layer or a residual block"
        )
    return _deepen_layer(model, after, module, batch_norm, init, generator, example_input)


@register_grow_op("widen")
def _widen_op(
    model: nn.Module, *, init: str, layer: str, width: int, noise: float = 0.0
) -> nn.Module:
    """``model.grow: [{op: widen, layer: NAME, width: N}]``."""
    current = int(_module(model, layer, "widen").weight.shape[0])
    if width <= current:
        raise ConfigError(
            f"widen '{layer}' to {width}: it already has {current} channels; "
            f"give a width above {current}"
        )
    return widen(model, layer, width, noise=noise, init=init)


@register_grow_op("deepen")
def _deepen_op(model: nn.Module, *, init: str, after: str, kind: str = "auto") -> nn.Module:
    """``model.grow: [{op: deepen, after: NAME}]``."""
    return deepen(model, after, kind=kind, init=init)
