"""Activation-cell pictures on tiny networks whose cells are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgetrain.diagnostics import capture_patterns, hash_words
from edgetrain.diagnostics.cells import activation_cells, count_regions, plot_cells
from edgetrain.errors import ConfigError


def _lines(weight: list[list[float]], bias: list[float]) -> nn.Module:
    """One ReLU layer in 2-D: unit j switches on across the line w_j . x + b_j = 0."""
    net = nn.Sequential(nn.Linear(2, len(bias)), nn.ReLU(), nn.Linear(len(bias), 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(weight))
        net[0].bias.copy_(torch.tensor(bias))
    return net


def test_two_units_cut_the_plane_into_four_quadrants() -> None:
    picture = activation_cells(_lines([[1, 0], [0, 1]], [0, 0]), resolution=41)
    assert picture.patterns == picture.regions == 4
    assert picture.keys.shape == (41, 41)
    # The quadrants: (u > 0, v > 0) differs from (u < 0, v > 0).
    assert picture.keys[-1, -1] != picture.keys[-1, 0]
    assert picture.keys[-1, -1] == picture.keys[-5, -5]


def test_three_lines_in_general_position_make_seven_cells() -> None:
    # x = 0.3, y = -0.2, x + y = 0.5: the small triangle lies inside [-1, 1]^2.
    net = _lines([[1, 0], [0, 1], [1, 1]], [-0.3, 0.2, -0.5])
    picture = activation_cells(net, resolution=200)
    assert picture.patterns == picture.regions == 7
    # Three lines through one point make six.
    assert activation_cells(_lines([[1, 0], [0, 1], [1, 1]], [0, 0, 0])).patterns == 6


def test_a_deeper_layer_pattern_and_the_cumulative_regions() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU())
    first = activation_cells(net, "1", resolution=96)
    second = activation_cells(net, "3", resolution=96)
    both = activation_cells(net, "3", resolution=96, cumulative=True)
    assert both.layers == ("1", "3") and second.layers == ("3",)
    # Regions of all layers refine those of each layer: every cell of 'both' lies in one
    # cell of 'first', and there are at least as many.
    assert both.patterns >= max(first.patterns, second.patterns)
    for key in np.unique(both.keys):
        assert len(np.unique(first.keys[both.keys == key])) == 1
    assert first.patterns <= 1 + 6 + 15  # at most 1 + n + C(n, 2) cells for 6 lines


def test_plane_through_three_images_and_the_png(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten())
    net.train()
    a, b, c = torch.randn(3, 1, 5, 5)
    picture = activation_cells(net, points=(a, b, c), resolution=33)
    assert net.training  # the mode is restored
    assert picture.points is not None and picture.keys.shape == (33, 33)
    assert picture.u[0] == -0.5 and picture.u[-1] == 1.5
    # The grid point at (u, v) = (1, 0) is b: its pattern is b's.
    net.eval()
    words = capture_patterns(net, b[None])["2"].reshape(1, -1)
    column = int(np.argmin(np.abs(picture.u - 1.0)))
    row = int(np.argmin(np.abs(picture.v - 0.0)))
    assert picture.keys[row, column] == int(hash_words(words)[0])
    path = plot_cells(picture, tmp_path / "cells.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_count_regions_separates_equal_values_that_do_not_touch() -> None:
    keys = np.array([[1, 2, 1], [1, 2, 1], [3, 3, 3]])
    assert count_regions(keys) == 4  # the two 1-columns are separate regions
    assert count_regions(np.zeros((4, 4))) == 1


def test_bad_layer_and_input_errors() -> None:
    net = _lines([[1, 0]], [0])
    with pytest.raises(ConfigError, match="'relu' is not an activation layer; valid layers: 1"):
        activation_cells(net, "relu")
    with pytest.raises(ConfigError, match="no activation layers"):
        activation_cells(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="differ in shape"):
        activation_cells(net, points=(torch.zeros(2), torch.zeros(2), torch.zeros(3)))
