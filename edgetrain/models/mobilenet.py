"""MobileNetV2 and MobileNetV3-Small, the standard edge image classifiers.

- Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018).
- Howard et al., "Searching for MobileNetV3" (ICCV 2019).

Both follow torchvision's layouts (the same parameter counts at 1000 classes: 3,504,872
and 2,542,856), with ``cifar=True`` strides for 32x32 inputs: the stem and the first
downsampling stage keep stride 1, so the last feature map is 4x4 instead of 1x1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from edgetrain.models.layers import ZooModel
from edgetrain.models.registry import MODELS

__all__ = [
    "InvertedResidual",
    "MobileNetV2",
    "MobileNetV3",
    "SqueezeExcitation",
    "conv_bn",
    "init_mobile",
    "make_divisible",
]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10 % below ``value``."""
    least = min_value or divisor
    rounded = max(least, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    activation: Callable[[], nn.Module] | None = nn.ReLU6,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: ``x * gate(fc2(act(fc1(avgpool(x)))))`` (Hu et al., 2018)."""

    def __init__(
        self,
        channels: int,
        squeeze: int,
        activation: Callable[[], nn.Module] = nn.ReLU,
        gate: Callable[[], nn.Module] = nn.Hardsigmoid,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = activation()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (kxk), optional squeeze-excitation, project (1x1, linear);
    a residual add when the shape is kept."""

    def __init__(
        self,
        c_in: int,
        expanded: int,
        c_out: int,
        kernel: int,
        stride: int,
        activation: Callable[[], nn.Module] = nn.ReLU6,
        se: SqueezeExcitation | None = None,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_bn(c_in, expanded, 1, activation=activation))
        layers.append(conv_bn(expanded, expanded, kernel, stride, expanded, activation))
        if se is not None:
            layers.append(se)
        layers.append(conv_bn(expanded, c_out, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
_V2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(ZooModel):
    """MobileNetV2 with a width multiplier."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
        width_mult: float = 1.0,
        cifar: bool = True,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        c_in = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        stem_stride = 1 if cifar else 2
        layers: list[nn.Module] = [conv_bn(in_channels, c_in, 3, stem_stride)]
        for i, (t, c, n, s) in enumerate(_V2_SETTINGS):
            c_out = make_divisible(c * width_mult)
            stride = 1 if cifar and i == 1 else s  # 32x32: keep resolution one stage longer
            for j in range(n):
                layers.append(InvertedResidual(c_in, c_in * t, c_out, 3, stride if j == 0 else 1))
                c_in = c_out
        layers.append(conv_bn(c_in, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)
        init_mobile(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


# kernel, expanded, out, squeeze-excitation, activation, stride (the paper's Table 2)
_V3_SMALL: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
]
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "hswish": nn.Hardswish}


class MobileNetV3(ZooModel):
    """MobileNetV3-Small: inverted residuals with squeeze-excitation and hard-swish."""

    def __init__(
        self,
        settings: Sequence[tuple[int, int, int, bool, str, int]],
        last_channels: int,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
        width_mult: float = 1.0,
        cifar: bool = True,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        c_in = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [
            conv_bn(in_channels, c_in, 3, 1 if cifar else 2, activation=nn.Hardswish)
        ]
        for i, (k, expanded, c, se, act, s) in enumerate(settings):
            stride = 1 if cifar and i == 0 else s
            c_out = make_divisible(c * width_mult)
            wide = make_divisible(expanded * width_mult)
            attention = SqueezeExcitation(wide, make_divisible(wide // 4)) if se else None
            layers.append(
                InvertedResidual(c_in, wide, c_out, k, stride, _ACTIVATIONS[act], attention)
            )
            c_in = c_out
        head = 6 * c_in
        layers.append(conv_bn(c_in, head, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(head, last_channels),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(last_channels, num_classes),
        )
        init_mobile(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def init_mobile(model: nn.Module) -> None:
    """torchvision's initialisation of the MobileNets and EfficientNets."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@MODELS.register("mobilenet_v2", input="image")
def mobilenet_v2(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    width_mult: float = 1.0,
    cifar: bool = True,
    dropout: float = 0.2,
) -> MobileNetV2:
    """MobileNetV2 (Sandler et al., 2018); ``width_mult`` 0.35-1.4; CIFAR strides by default."""
    return MobileNetV2(in_channels, num_classes, input_size, width_mult, cifar, dropout)


@MODELS.register("mobilenet_v3_small", input="image")
def mobilenet_v3_small(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    width_mult: float = 1.0,
    cifar: bool = True,
    dropout: float = 0.2,
) -> MobileNetV3:
    """MobileNetV3-Small (Howard et al., 2019): squeeze-excitation, hard-swish."""
    last = make_divisible(1024 * width_mult)
    return MobileNetV3(
        _V3_SMALL, last, in_channels, num_classes, input_size, width_mult, cifar, dropout
    )
