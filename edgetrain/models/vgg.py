"""VGG-style networks (Simonyan & Zisserman, "Very Deep Convolutional Networks", 2015).

``vgg_small`` is the 6-conv net of the cost-model spec (82,330 parameters for 3x32x32
inputs and 10 classes); ``vgg11_b`` is a reduced VGG-11 with batch-norm for 100 classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from edgetrain.models.layers import ZooModel, init_weights
from edgetrain.models.registry import MODELS

__all__ = ["VGG", "vgg11_b", "vgg_small"]

Plan = Sequence[int | str]


class VGG(ZooModel):
    """A plain VGG: 3x3 convs (padding 1) with ReLU, ``"M"`` marks a 2x2 max-pool.

    Convs are named ``conv1 .. convN``, their activations ``relu1 .. reluN``, pools
    ``pool1 ..``, batch-norms ``bn1 .. bnN``; hidden linears ``fc1 ..`` and the
    classifier ``fc``.
    """

    def __init__(
        self,
        plan: Plan,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
        hidden: Sequence[int] = (),
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        self._order: list[str] = []
        c, size, n_conv, n_pool = in_channels, input_size, 0, 0
        for item in plan:
            if item == "M":
                n_pool += 1
                self._add(f"pool{n_pool}", nn.MaxPool2d(2))
                size //= 2
                continue
            n_conv += 1
            width = int(item)
            self._add(f"conv{n_conv}", nn.Conv2d(c, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                self._add(f"bn{n_conv}", nn.BatchNorm2d(width))
            self._add(f"relu{n_conv}", nn.ReLU(inplace=True))
            c = width
        self._add("flatten", nn.Flatten())
        features = c * size * size
        for i, h in enumerate(hidden, start=1):
            self._add(f"fc{i}", nn.Linear(features, h))
            self._add(f"relu_fc{i}", nn.ReLU(inplace=True))
            if dropout:
                self._add(f"drop{i}", nn.Dropout(dropout))
            features = h
        self._add("fc", nn.Linear(features, num_classes))
        init_weights(self)

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self._order.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            x = cast(nn.Module, self._modules[name])(x)
        return x


@MODELS.register("vgg_small", input="image")
def vgg_small(in_channels: int = 3, num_classes: int = 10, input_size: int = 32) -> VGG:
    """6-conv VGG (16,16,M,32,32,M,64,64,M) + linear; 82,330 params at 3x32x32/10 classes."""
    return VGG([16, 16, "M", 32, 32, "M", 64, 64, "M"], in_channels, num_classes, input_size)


@MODELS.register("vgg11_b", input="image")
def vgg11_b(
    in_channels: int = 3, num_classes: int = 100, input_size: int = 32, dropout: float = 0.5
) -> VGG:
    """Reduced VGG-11 with batch-norm: 9 convs (32..256) and 3 linears, for 100 classes."""
    plan: Plan = [32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, 256, "M"]
    return VGG(plan, in_channels, num_classes, input_size, (256, 256), True, dropout)
