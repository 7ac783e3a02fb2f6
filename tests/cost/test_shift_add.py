"""Shift-add accounting: products from the traced forward, shifts and adds per sample."""

from __future__ import annotations

import pytest
from torch import nn

from edgetrain.cost import shift_add_costs, shift_add_ops
from edgetrain.errors import ConfigError


def test_one_sample_is_one_shift_and_one_add_per_product() -> None:
    assert shift_add_ops(100, 10, 1) == (100, 100)
    assert shift_add_ops(100, 10, 4) == (410, 400)  # + one 1/n scaling per output
    with pytest.raises(ValueError, match="samples must be >= 1"):
        shift_add_ops(100, 10, 0)


def test_products_follow_the_layer_geometry() -> None:
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise: 9 weights per channel
        nn.Flatten(),
        nn.Linear(64, 5),
    )
    rows = shift_add_costs(net, (2, 8, 8), {"0": (2, 50), "1": (1, 36), "3": (1, 320)})
    by_name = {r.name: r for r in rows}
    assert by_name["0"].products == 16 * 50  # every output position uses the nonzero weights
    assert by_name["0"].outputs == 4 * 16 and by_name["0"].shifts == 2 * 800 + 64
    assert by_name["1"].products == 16 * 36  # a depthwise row holds 9 weights per channel
    assert by_name["3"].products == 320 and by_name["3"].kind == "Linear"


def test_a_layer_without_a_weight_op_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ConfigError, match="layer '1' runs no convolution or linear op"):
        shift_add_costs(net, (1, 5, 5), {"1": (1, 0)})
