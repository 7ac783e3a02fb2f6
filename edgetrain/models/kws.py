"""DS-CNN, the depthwise-separable keyword-spotting network for microcontrollers.

Zhang, Suda, Lai & Chandra, "Hello Edge: Keyword Spotting on Microcontrollers" (2017).
A 10x4 convolution over the (frames x MFCC) input, then depthwise-separable layers
(3x3 depthwise + 1x1 pointwise, each with batch-norm and ReLU), average pooling and one
linear layer. Sizes S, M and L follow the paper's reference configurations with 'same'
padding; on 49x10 MFCC inputs their convolutions and linear layer take 2.66M, 9.82M and
28.3M dense MACs, the paper's 5.4M, 19.8M and 56.9M operations at two per MAC (the cost
model's border-aware count, batch-norms and activations included, is 2.89M, 10.3M and
29.2M).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.models.layers import ZooModel, init_weights
from edgetrain.models.registry import MODELS

__all__ = ["DSCNN", "SamePad2d"]

# filters, first stride (frames, MFCC), strides of the separable layers
_SIZES: dict[str, tuple[int, tuple[int, int], list[int]]] = {
    "S": (64, (2, 2), [1, 1, 1, 1]),
    "M": (172, (2, 1), [2, 1, 1, 1]),
    "L": (276, (2, 1), [2, 1, 1, 1, 1]),
}


class SamePad2d(nn.Module):
    """Zero padding that makes a following ``kernel``/``stride`` convolution 'same':
    output size ``ceil(input / stride)``, the extra row or column at the end."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        dims = zip(reversed(x.shape[2:]), reversed(self.kernel), reversed(self.stride), strict=True)
        for size, k, s in dims:
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)


class DSCNN(ZooModel):
    """DS-CNN of one size."""

    def __init__(
        self,
        size: str = "S",
        in_channels: int = 1,
        num_classes: int = 12,
        input_size: int | Sequence[int] = (49, 10),
    ) -> None:
        super().__init__()
        filters, stride, strides = _SIZES[size]
        frames, coeffs = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.input_shape = (in_channels, int(frames), int(coeffs))
        self.pad = SamePad2d((10, 4), stride)
        self.conv1 = nn.Conv2d(in_channels, filters, (10, 4), stride)
        self.bn1 = nn.BatchNorm2d(filters)
        self.relu1 = nn.ReLU()
        blocks: list[nn.Module] = []
        for s in strides:
            blocks += [
                SamePad2d((3, 3), (s, s)),
                nn.Conv2d(filters, filters, 3, s, groups=filters, bias=False),
                nn.BatchNorm2d(filters),
                nn.ReLU(),
                nn.Conv2d(filters, filters, 1, bias=False),
                nn.BatchNorm2d(filters),
                nn.ReLU(),
            ]
        self.separable = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(filters, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(self.pad(x))))
        return self.fc(self.flatten(self.pool(self.separable(x))))


@MODELS.register("ds_cnn", input="image")
def ds_cnn(
    size: str = "S",
    in_channels: int = 1,
    num_classes: int = 12,
    input_size: int | list[int] = (49, 10),  # type: ignore[assignment]
) -> DSCNN:
    """DS-CNN keyword spotter (Zhang et al., 2017), size S, M or L; 49x10 MFCC inputs."""
    if size not in _SIZES:
        raise ValueError(f"ds_cnn size must be one of {', '.join(_SIZES)}, got {size!r}")
    return DSCNN(size, in_channels, num_classes, input_size)
