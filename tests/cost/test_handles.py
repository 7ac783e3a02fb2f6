"""Per-op rules through ``analyze``: the spec's forward and backward tables, one layer at a time.

Each layer under test sits after a 1x1 "stem" layer that is trained too, so that under the
conventional plan it is above the lowest trained layer and computes every backward term
it has. Counts are per batch: forward, input and weight gradients scale with the batch,
the update (one MAC per parameter) does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from edgetrain.cost import ALL, LayerCost, analyze


def _rows(model: nn.Module, shape: Sequence[int], batch: int = 1) -> list[LayerCost]:
    return analyze(model, shape, plans=[ALL], batch_size=batch).by_layer()


def _row(model: nn.Module, shape: Sequence[int], name: str, batch: int = 1) -> LayerCost:
    (row,) = [r for r in _rows(model, shape, batch) if r.name == name]
    return row


def _stem(layer: nn.Module, shape: Sequence[int]) -> nn.Sequential:
    """``layer`` after a trained 1x1 layer of the same width (so it gets a gradient)."""
    if isinstance(layer, nn.Linear):
        stem: nn.Module = nn.Linear(shape[-1], shape[-1])
    elif len(shape) == 2:
        stem = nn.Conv1d(shape[0], shape[0], 1)
    else:
        stem = nn.Conv2d(shape[0], shape[0], 1)
    return nn.Sequential(stem, layer)


# (layer, one sample's shape, per-sample forward, input grad, weight grad, update)
WEIGHT_LAYERS = {
    # c_in=2, c_out=4, i=10, k=3, p=1: T = 3*10 - 2 = 28; 2*4*28 = 224, bias adds 4*10 = 40
    "conv1d": (nn.Conv1d(2, 4, 3, padding=1), (2, 10), 224 + 40, 224, 224, 2 * 4 * 3 + 4),
    # 6x6, 3x3, p=1: T = 16^2 = 256; 3*8*256 = 6144, bias adds 8*36 = 288; 216 + 8 params
    "conv2d": (nn.Conv2d(3, 8, 3, padding=1), (3, 6, 6), 6144 + 288, 6144, 6144, 224),
    "conv2d-no-bias": (nn.Conv2d(3, 8, 3, padding=1, bias=False), (3, 6, 6), 6144, 6144, 6144, 216),
    # stride 2 on 7x7 (odd): 10 taps per dimension, T = 100; 3*8*100 = 2400; out 4x4 -> 128 adds
    "conv2d-stride2-odd": (nn.Conv2d(3, 8, 3, 2, 1), (3, 7, 7), 2400 + 128, 2400, 2400, 224),
    # stride 2 on 8x8 (even): 11 taps per dimension, T = 121; 3*8*121 = 2904
    "conv2d-stride2-even": (nn.Conv2d(3, 8, 3, 2, 1), (3, 8, 8), 2904 + 128, 2904, 2904, 224),
    # depthwise: c_in*c_out*T/g = 4*4*256/4 = 1024; bias adds 4*36 = 144; 4*9 + 4 params
    "depthwise": (nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 6, 6), 1024 + 144, 1024, 1024, 40),
    # dilation 2, p=2 on 6: taps 2, 2, 3, 3, 2, 2 = 14, T = 196; 2*3*196 = 1176
    "dilated": (
        nn.Conv2d(2, 3, 3, padding=2, dilation=2, bias=False),
        (2, 6, 6),
        1176,
        1176,
        1176,
        54,
    ),
    # c_in*c_out = 15, + c_out bias adds
    "linear": (nn.Linear(5, 3), (5,), 15 + 3, 15, 15, 18),
    "linear-no-bias": (nn.Linear(5, 3, bias=False), (5,), 15, 15, 15, 15),
    # a 3-D input (7 tokens of 5 features): 7 times the 2-D counts, same update
    "linear-3d": (nn.Linear(5, 3), (7, 5), 7 * 18, 7 * 15, 7 * 15, 18),
    "linear-3d-no-bias": (nn.Linear(5, 3, bias=False), (7, 5), 7 * 15, 7 * 15, 7 * 15, 15),
}


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("case", WEIGHT_LAYERS)
def test_weight_layers_follow_the_spec_tables(case: str, batch: int) -> None:
    layer, shape, forward, input_grad, weight_grad, update = WEIGHT_LAYERS[case]
    row = _row(_stem(layer, shape), shape, "1", batch)
    assert row.params == update
    assert (row.forward, row.input_grad, row.weight_grad) == (
        batch * forward,
        batch * input_grad,
        batch * weight_grad,
    )
    assert row.update == update  # one MAC per parameter, whatever the batch


@pytest.mark.parametrize("case", ["conv1d", "conv2d", "linear", "linear-3d"])
def test_the_lowest_trained_layer_computes_no_input_gradient(case: str) -> None:
    layer, shape, forward, _, weight_grad, update = WEIGHT_LAYERS[case]
    (row,) = _rows(nn.Sequential(layer), shape)
    assert (row.forward, row.input_grad, row.weight_grad, row.update) == (
        forward,
        0,
        weight_grad,
        update,
    )


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + x


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y, x], 1).flatten(1)


# 2 channels of 4x4: c*i = 32. (layer, op kind, per-sample forward, input grad, w-grad, update)
PARAM_FREE = {
    "relu": (nn.ReLU(), "activation", 32, 0, 0, 0),
    "relu6": (nn.ReLU6(), "activation", 32, 0, 0, 0),
    "maxpool": (nn.MaxPool2d(2), "pool", 32, 32, 0, 0),
    "avgpool": (nn.AvgPool2d(2), "pool", 32, 32, 0, 0),
    "adaptive-avgpool": (nn.AdaptiveAvgPool2d(1), "pool", 32, 32, 0, 0),
    # unfolded batch-norm: 2*c*i forward, input grad and weight grad; update 2*c
    "batchnorm": (nn.BatchNorm2d(2), "batchnorm", 64, 64, 64, 4),
}


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("case", PARAM_FREE)
def test_elementwise_pool_and_norm_layers(case: str, batch: int) -> None:
    layer, kind, forward, input_grad, weight_grad, update = PARAM_FREE[case]
    row = _row(_stem(layer, (2, 4, 4)), (2, 4, 4), "1", batch)
    assert row.kind == kind
    assert (row.forward, row.input_grad, row.weight_grad, row.update) == (
        batch * forward,
        batch * input_grad,
        batch * weight_grad,
        update,
    )


@pytest.mark.parametrize("batch", [1, 4])
def test_a_residual_add_costs_c_times_i_forward_and_passes_the_gradient(batch: int) -> None:
    rows = _rows(_Residual(), (2, 4, 4), batch)
    (add,) = [r for r in rows if r.kind == "add"]
    assert add.name == "(model)" and add.op == "add"
    assert (add.forward, add.input_grad, add.weight_grad, add.update) == (batch * 32, 0, 0, 0)
    assert add.stored_activations == 0 and add.gradient_buffers == 0


def test_concatenation_and_flatten_are_free() -> None:
    report = analyze(_Concat(), (2, 4, 4), plans=[ALL])
    # only the 1x1 conv costs: 2*2*16 + 2*16 bias adds
    assert [r.kind for r in report.by_layer()] == ["conv"]
    assert report.total().forward_macs == 64 + 32
    assert report.unsupported == []
    # cat allocates a new 4x4x4 buffer, flatten is a view of it: 32 + 32 + 64 elements of
    # activations, plus 6 weights, at 4 bytes
    assert report.total().memory_bytes == 4 * (32 + 32 + 64 + 6)


def test_a_module_called_twice_is_updated_once() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    rows = _rows(Twice(), (4,))
    assert [r.name for r in rows] == ["fc", "fc#2"]
    # two forwards of 16 + 4, one weight gradient each, one update of 20 parameters
    assert [(r.forward, r.input_grad, r.weight_grad, r.update) for r in rows] == [
        (20, 0, 16, 20),
        (20, 16, 16, 0),
    ]
