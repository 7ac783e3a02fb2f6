"""Parametric CIFAR ResNet (He et al., "Deep Residual Learning for Image Recognition", 2016).

``resnet_cifar`` builds any member of the family that growing or pruning can reach:
number of stages, blocks per stage, convs per block, widths, bottlenecks and the
shortcut type used when a block changes shape. Module names follow the common CIFAR
convention: ``conv1``, ``bn1``, ``layer{s}.{i}.conv{j}``/``bn{j}``/``shortcut``, ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.models.layers import ZooModel, init_weights
from edgetrain.models.registry import MODELS
from edgetrain.models.surgery import ResidualBypass

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56", "resnet_cifar"]

SHORTCUTS = ("conv3x3", "conv1x1", "pad")
BOTTLENECK_EXPANSION = 4


class _PadShortcut(nn.Module):
    """Parameter-free shortcut ("option A"): subsample spatially, zero-pad channels."""

    # A dependency graph reads the channel padding as a one-to-one channel map, which it
    # is not: the channels on either side of this shortcut cannot be pruned or grown.
    traceable_channels = False

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


def _shortcut(kind: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    if kind == "pad":
        return _PadShortcut(c_in, c_out, stride)
    k = 3 if kind == "conv3x3" else 1
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class BasicBlock(nn.Module):
    """``len(kernels)`` conv-BN layers (ReLU between), a shortcut, then add and ReLU.

    Layer ``j`` is ``conv{j}``/``bn{j}``/``relu{j}``; the activation after the add is
    ``relu``. The shortcut is absent (identity) when the block keeps the shape.
    """

    def __init__(
        self,
        c_in: int,
        widths: Sequence[int],
        kernels: Sequence[int],
        stride: int,
        stride_at: int,
        shortcut: str,
    ) -> None:
        super().__init__()
        self.depth = len(widths)
        c = c_in
        for j, (w, k) in enumerate(zip(widths, kernels, strict=True), start=1):
            s = stride if j - 1 == stride_at else 1
            self.add_module(f"conv{j}", nn.Conv2d(c, w, k, stride=s, padding=k // 2, bias=False))
            self.add_module(f"bn{j}", nn.BatchNorm2d(w))
            if j < self.depth:
                self.add_module(f"relu{j}", nn.ReLU(inplace=True))
            c = w
        if stride != 1 or c_in != c:
            self.shortcut = _shortcut(shortcut, c_in, c, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for j in range(1, self.depth + 1):
            conv = cast(nn.Module, self._modules[f"conv{j}"])
            out = cast(nn.Module, self._modules[f"bn{j}"])(conv(out))
            if j < self.depth:
                out = cast(nn.Module, self._modules[f"relu{j}"])(out)
        identity = self.shortcut(x) if hasattr(self, "shortcut") else x
        return self.relu(out + identity)

    def bypass(self) -> ResidualBypass:
        """This block once its residual branch carries no signal (its last conv sees only
        zeros): ``relu(shortcut(x) + c)``, with ``c`` what the last conv-BN makes of zeros
        in eval mode. Exact in eval mode; ``c`` trains on as a bias."""
        conv = cast(nn.Conv2d, self._modules[f"conv{self.depth}"])
        bn = cast(nn.BatchNorm2d, self._modules[f"bn{self.depth}"])
        mean, var = bn.running_mean, bn.running_var
        assert mean is not None and var is not None, "the zoo's blocks track BN statistics"
        with torch.no_grad():
            zero = conv.bias if conv.bias is not None else torch.zeros_like(mean)
            scale = bn.weight / torch.sqrt(var + bn.eps)
            const = (zero - mean) * scale + bn.bias
        bypass = ResidualBypass(getattr(self, "shortcut", None), const.numel())
        with torch.no_grad():
            bypass.offset.bias.copy_(const)
        return bypass.to(const.device)


class CifarResNet(ZooModel):
    """Stem conv-BN-ReLU, residual stages (stride 2 from the second), GAP, linear."""

    def __init__(
        self,
        stages: int = 3,
        blocks: Sequence[int] = (5, 5, 5),
        layers_per_block: int = 2,
        widths: Sequence[int] = (16, 32, 64),
        bottleneck: bool = False,
        shortcut: str = "conv3x3",
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if len(blocks) != stages or len(widths) != stages:
            raise ValueError(
                f"resnet_cifar: blocks ({len(blocks)}) and widths ({len(widths)}) "
                f"need one entry per stage ({stages})"
            )
        if shortcut not in SHORTCUTS:
            raise ValueError(f"resnet_cifar: shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if layers_per_block < 1:
            raise ValueError("resnet_cifar: layers_per_block must be >= 1")
        self.input_shape = (in_channels, input_size, input_size)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c = widths[0]
        for s, (n_blocks, w) in enumerate(zip(blocks, widths, strict=True), start=1):
            if bottleneck:
                block_widths, kernels, stride_at = [w, w, w * BOTTLENECK_EXPANSION], [1, 3, 1], 1
            else:
                block_widths, kernels, stride_at = [w] * layers_per_block, [3] * layers_per_block, 0
            stage = []
            for i in range(n_blocks):
                stride = 2 if s > 1 and i == 0 else 1
                stage.append(BasicBlock(c, block_widths, kernels, stride, stride_at, shortcut))
                c = block_widths[-1]
            self.add_module(f"layer{s}", nn.Sequential(*stage))
        self.num_stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for s in range(1, self.num_stages + 1):
            x = cast(nn.Module, self._modules[f"layer{s}"])(x)
        return self.fc(self.flatten(self.pool(x)))


@MODELS.register("resnet_cifar", input="image")
def resnet_cifar(
    stages: int = 3,
    blocks: Sequence[int] = (5, 5, 5),
    layers_per_block: int = 2,
    widths: Sequence[int] = (16, 32, 64),
    bottleneck: bool = False,
    shortcut: str = "conv3x3",
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
) -> CifarResNet:
    """Parametric CIFAR ResNet: stages, blocks, convs per block, widths, shortcut type."""
    return CifarResNet(
        stages,
        blocks,
        layers_per_block,
        widths,
        bottleneck,
        shortcut,
        in_channels,
        num_classes,
        input_size,
    )


def _preset(depth: int, doc: str):  # noqa: ANN202 - returns a registered factory
    n = (depth - 2) // 6

    def factory(in_channels: int = 3, num_classes: int = 10, input_size: int = 32) -> CifarResNet:
        return CifarResNet(
            3, (n, n, n), 2, (16, 32, 64), False, "conv1x1", in_channels, num_classes, input_size
        )

    factory.__doc__ = doc
    factory.__name__ = f"resnet{depth}"
    return MODELS.register(f"resnet{depth}", input="image")(factory)


resnet8 = _preset(8, "ResNet-8 for 32x32 inputs (3x1 blocks, 1x1-conv shortcuts, 16/32/64).")
resnet20 = _preset(20, "ResNet-20 for 32x32 inputs (3x3 blocks, 1x1-conv shortcuts, 16/32/64).")
resnet32 = _preset(32, "ResNet-32 for 32x32 inputs (3x5 blocks, 1x1-conv shortcuts, 16/32/64).")
resnet56 = _preset(56, "ResNet-56 for 32x32 inputs (3x9 blocks, 1x1-conv shortcuts, 16/32/64).")
