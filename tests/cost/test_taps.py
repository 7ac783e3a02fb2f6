"""Border-aware kernel taps ``T_k``: closed forms of the spec, hand counts, two references."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from edgetrain.cost import conv_output_length, kernel_taps, taps_1d


def _brute_force(i: int, k: int, s: int, p: int, d: int) -> int:
    """The spec's definition, literally: taps j of output o that land inside [0, i)."""
    outputs = (i + 2 * p - d * (k - 1) - 1) // s + 1
    return sum(1 for o in range(outputs) for j in range(k) if 0 <= o * s - p + j * d < i)


@pytest.mark.parametrize("i", [1, 2, 3, 8, 32])
def test_k3_p1_s1_gives_3i_minus_2(i: int) -> None:
    # Every output position applies 3 taps except the two borders, which lose one each.
    assert taps_1d(i, 3, 1, 1) == 3 * i - 2


@pytest.mark.parametrize(
    ("i", "k", "s", "d"), [(32, 3, 1, 1), (9, 5, 2, 1), (10, 3, 1, 3), (7, 1, 3, 1)]
)
def test_without_padding_every_tap_lands_inside(i: int, k: int, s: int, d: int) -> None:
    o = conv_output_length(i, k, s, 0, d)
    assert taps_1d(i, k, s, 0, d) == k * o


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # i=8, k=3, s=2, p=1: 4 outputs at -1..1, 1..3, 3..5, 5..7 -> 2 + 3 + 3 + 3
        ((8, 3, 2, 1, 1), 11),
        # i=7 (odd), k=3, s=2, p=1: 4 outputs at -1..1, 1..3, 3..5, 5..7 (7 is padding) -> 2+3+3+2
        ((7, 3, 2, 1, 1), 10),
        # i=5, k=3, s=1, p=2: 7 outputs, taps 1, 2, 3, 3, 3, 2, 1
        ((5, 3, 1, 2, 1), 15),
        # i=6, k=3, p=2, d=2: output o reads o-2, o, o+2 -> 2, 2, 3, 3, 2, 2
        ((6, 3, 1, 2, 2), 14),
        # i=7, k=3, p=0, d=2: 3 outputs, all 3 taps inside
        ((7, 3, 1, 0, 2), 9),
        # i=8, k=5, p=2: 8 outputs, taps 3, 4, 5, 5, 5, 5, 4, 3 (= 5i - 6)
        ((8, 5, 1, 2, 1), 34),
        # i=4, k=3, s=1, p=1: 3*4 - 2
        ((4, 3, 1, 1, 1), 10),
    ],
)
def test_hand_counted_geometries(args: tuple[int, int, int, int, int], expected: int) -> None:
    assert taps_1d(*args) == expected


def test_two_dimensional_taps_are_the_product_of_the_dimensions() -> None:
    # 32x32, 3x3, padding 1: (3*32 - 2)^2 = 94^2 = 8836, not 9 * 32^2 = 9216
    assert kernel_taps((32, 32), (3, 3), (1, 1), (1, 1), (1, 1)) == 8836
    # 8x7 map, 3x3 kernel, stride 2, padding 1: 11 (even length) * 10 (odd length)
    assert kernel_taps((8, 7), (3, 3), (2, 2), (1, 1), (1, 1)) == 110
    # mixed: 5-long kernel with padding 2 on 8 rows (34), 1-wide kernel on 6 columns (6)
    assert kernel_taps((8, 6), (5, 1), (1, 1), (2, 0), (1, 1)) == 204
    # 1-D
    assert kernel_taps((10,), (3,), (1,), (1,), (1,)) == 28


def test_taps_match_a_brute_force_count_over_a_grid() -> None:
    checked = 0
    for i, k, s, p, d in itertools.product(
        range(1, 10), range(1, 6), (1, 2, 3), range(4), (1, 2, 3)
    ):
        if conv_output_length(i, k, s, p, d) < 1:
            continue
        assert taps_1d(i, k, s, p, d) == _brute_force(i, k, s, p, d), (i, k, s, p, d)
        checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    ("i", "k", "s", "p", "d"), [(9, 3, 2, 1, 1), (7, 5, 1, 2, 2), (12, 4, 3, 3, 1)]
)
def test_taps_equal_the_sum_of_a_ones_convolution(i: int, k: int, s: int, p: int, d: int) -> None:
    # An independent reference: with all-ones input and kernel and zero padding, each output
    # is the number of its taps that land on the input.
    ones = F.conv1d(torch.ones(1, 1, i), torch.ones(1, 1, k), stride=s, padding=p, dilation=d)
    assert taps_1d(i, k, s, p, d) == int(ones.sum())


@pytest.mark.parametrize(
    "args",
    [(0, 3, 1, 1, 1), (8, 0, 1, 1, 1), (8, 3, 0, 1, 1), (8, 3, 1, -1, 1), (8, 3, 1, 1, 0)],
)
def test_invalid_geometry_raises(args: tuple[int, int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="invalid convolution geometry"):
        taps_1d(*args)


def test_kernel_taps_needs_one_entry_per_dimension() -> None:
    with pytest.raises(ValueError, match="one entry per dimension"):
        kernel_taps((8, 8), (3,), (1, 1), (1, 1), (1, 1))


def test_a_kernel_wider_than_the_padded_input_raises() -> None:
    # i=2, k=5, p=0: output length (2 - 4 - 1) // 1 + 1 = -2
    with pytest.raises(ValueError):
        taps_1d(2, 5)
