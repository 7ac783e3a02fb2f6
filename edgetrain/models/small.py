"""Small task-specific networks of the zoo.

- ``kws_cnn``: the keyword-spotting CNN of the TensorFlow "simple audio" tutorial
  (two valid 3x3 convs, max-pool, dropout, two linears) on 32x32 spectrograms.
- ``small_cnn``: 6 conv + 2 dense layers (~550k params), 32x32x1 input, for
  transfer-learning experiments.
- ``fcn1d``: a fully-convolutional time-series net (Wang et al., "Time Series
  Classification from Scratch with Deep Neural Networks", 2017), shrunk to about 1k
  parameters so it fits a microcontroller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from edgetrain.models.layers import ZooModel, init_weights
from edgetrain.models.registry import MODELS
from edgetrain.models.vgg import VGG, Plan

__all__ = ["FCN1d", "KWSCNN", "fcn1d", "kws_cnn", "small_cnn"]


class KWSCNN(ZooModel):
    """conv 32 (valid) -> conv 64 (valid) -> maxpool 2 -> dropout -> linear 128 -> linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 8, input_size: int = 32) -> None:
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(0.25)
        self.flatten = nn.Flatten()
        side = (input_size - 4) // 2
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.relu3 = nn.ReLU(inplace=True)
        self.drop2 = nn.Dropout(0.5)
        self.fc = nn.Linear(128, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.flatten(self.drop1(self.pool(x)))
        return self.fc(self.drop2(self.relu3(self.fc1(x))))


@MODELS.register("kws_cnn", input="spectrogram")
def kws_cnn(in_channels: int = 1, num_classes: int = 8, input_size: int = 32) -> KWSCNN:
    """Keyword-spotting CNN on 32x32 spectrograms; 1,625,608 params for 8 classes."""
    return KWSCNN(in_channels, num_classes, input_size)


@MODELS.register("small_cnn", input="image")
def small_cnn(in_channels: int = 1, num_classes: int = 10, input_size: int = 32) -> VGG:
    """6 conv (32,32,M,64,64,M,128,128,M) + 2 dense layers, ~550k params at 1x32x32."""
    plan: Plan = [32, 32, "M", 64, 64, "M", 128, 128, "M"]
    return VGG(plan, in_channels, num_classes, input_size, hidden=(128,))


class FCN1d(ZooModel):
    """Blocks ``conv{j}``-``bn{j}``-``relu{j}`` (own kernel sizes), global average pool, ``fc``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        length: int = 150,
        widths: Sequence[int] = (8, 16, 8),
        kernels: Sequence[int] = (7, 5, 3),
    ) -> None:
        super().__init__()
        if len(widths) != len(kernels) or not widths:
            raise ValueError("fcn1d: widths and kernels must be non-empty and of equal length")
        self.input_shape = (in_channels, length)
        self.depth = len(widths)
        c = in_channels
        for j, (w, k) in enumerate(zip(widths, kernels, strict=True), start=1):
            self.add_module(f"conv{j}", nn.Conv1d(c, w, k, padding=k // 2, bias=False))
            self.add_module(f"bn{j}", nn.BatchNorm1d(w))
            self.add_module(f"relu{j}", nn.ReLU(inplace=True))
            c = w
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j in range(1, self.depth + 1):
            conv, bn, relu = (
                cast(nn.Module, self._modules[f"{k}{j}"]) for k in ("conv", "bn", "relu")
            )
            x = relu(bn(conv(x)))
        return self.fc(self.flatten(self.pool(x)))


@MODELS.register("fcn1d", input="series")
def fcn1d(
    in_channels: int = 1,
    num_classes: int = 2,
    length: int = 150,
    widths: Sequence[int] = (8, 16, 8),
    kernels: Sequence[int] = (7, 5, 3),
) -> FCN1d:
    """MCU-sized fully-convolutional time-series net (~1k params)."""
    return FCN1d(in_channels, num_classes, length, widths, kernels)
