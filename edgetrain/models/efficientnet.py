"""EfficientNet-B0, the transfer-learning thesis' network.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
(ICML 2019). torchvision's layout (5,288,548 parameters at 1000 classes): MBConv blocks
with squeeze-excitation (SiLU, sigmoid gate, a quarter of the block's input channels),
without stochastic depth. ``cifar=True`` keeps stride 1 in the stem and the first
downsampling stage for 32x32 inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetrain.models.layers import ZooModel
from edgetrain.models.mobilenet import InvertedResidual, SqueezeExcitation, conv_bn, init_mobile
from edgetrain.models.registry import MODELS

__all__ = ["EfficientNet"]

# expansion, kernel, first stride, output channels, repeats (B0, the paper's Table 1)
_B0 = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


class EfficientNet(ZooModel):
    """EfficientNet-B0."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
        cifar: bool = True,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        c_in = 32
        layers: list[nn.Module] = [
            conv_bn(in_channels, c_in, 3, 1 if cifar else 2, activation=nn.SiLU)
        ]
        for i, (t, k, s, c_out, n) in enumerate(_B0):
            for j in range(n):
                stride = (1 if cifar and i == 1 else s) if j == 0 else 1
                se = SqueezeExcitation(c_in * t, max(1, c_in // 4), nn.SiLU, nn.Sigmoid)
                layers.append(InvertedResidual(c_in, c_in * t, c_out, k, stride, nn.SiLU, se))
                c_in = c_out
        layers.append(conv_bn(c_in, 1280, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)
        init_mobile(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


@MODELS.register("efficientnet_b0", input="image")
def efficientnet_b0(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    cifar: bool = True,
    dropout: float = 0.2,
) -> EfficientNet:
    """EfficientNet-B0 (Tan & Le, 2019): MBConv with squeeze-excitation and SiLU."""
    return EfficientNet(in_channels, num_classes, input_size, cifar, dropout)
