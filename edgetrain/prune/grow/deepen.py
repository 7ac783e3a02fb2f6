"""Net2Net deepening: an identity-initialised conv + batch-norm after a layer, or an
identity residual block (last batch-norm gamma zero) after a residual block.

Chen, Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer" (2016).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from edgetrain.errors import EdgetrainError
from edgetrain.models.resnet import BasicBlock
from edgetrain.models.surgery import set_module
from edgetrain.prune.grow._common import (
    _BN,
    _BNS,
    _CONVS,
    DEEPEN_KINDS,
    _check_init,
    _graph,
    _kaiming,
    _module,
    _names,
)
from edgetrain.prune.grow.ops import GROW_OPS

__all__ = ["deepen"]


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


@GROW_OPS.register("deepen")
def _deepen_op(model: nn.Module, *, init: str, after: str, kind: str = "auto") -> nn.Module:
    """``model.grow: [{op: deepen, after: NAME}]``."""
    return deepen(model, after, kind=kind, init=init)
