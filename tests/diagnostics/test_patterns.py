"""Activation-pattern capture: bit packing, hashing, hooks, functional activations."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.diagnostics import (
    ActivationMarker,
    activation_layers,
    capture_patterns,
    hash_words,
    pack_bits,
    pack_pre_activation,
    pattern_samples,
)
from edgetrain.errors import ConfigError


def _bits(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows])


def test_pack_bits_puts_channel_c_at_bit_c_mod_64_of_word_c_div_64() -> None:
    assert pack_bits(_bits(["000", "100", "010", "101", "111"])).flatten().tolist() == [
        0,
        1,
        2,
        5,
        7,
    ]
    wide = torch.zeros(3, 130, dtype=torch.bool)
    wide[0, 63] = True  # the sign bit of word 0
    wide[1, 64] = wide[1, 129] = True  # bit 0 of word 1, bit 1 of word 2
    wide[2] = True
    packed = pack_bits(wide)
    assert packed.shape == (3, 3) and packed.dtype == torch.int64
    assert packed[0].tolist() == [-(2**63), 0, 0]
    assert packed[1].tolist() == [0, 1, 2]
    assert packed[2].tolist() == [-1, -1, 3]  # 64 ones, 64 ones, 2 ones


def test_pack_bits_matches_a_per_bit_sum_on_random_rows() -> None:
    g = torch.Generator().manual_seed(0)
    bits = torch.rand(50, 40, generator=g) > 0.5
    expected = sum(bits[:, c].long() << c for c in range(40))
    assert torch.equal(pack_bits(bits)[:, 0], expected)


def test_pattern_samples_makes_every_conv_position_a_sample() -> None:
    x = torch.zeros(2, 3, 2, 2)
    x[1, 2, 0, 1] = 1.0  # sample 1, channel 2, row 0, column 1
    x[0, 0] = 1.0  # channel 0 on at every position of sample 0
    bits = pattern_samples(x)
    assert bits.shape == (2 * 2 * 2, 3)
    # Row order is (n, h, w): sample 1's position (0, 1) is row 4 + 1.
    assert bits[5].tolist() == [False, False, True]
    assert bits[:4, 0].all() and not bits[4:, 0].any()
    assert pattern_samples(torch.tensor([[-1.0, 0.0, 2.0]])).tolist() == [[False, False, True]]


@pytest.mark.parametrize("shape", [(7, 3), (5, 13, 4, 3), (2, 70, 5), (3, 64, 2, 2), (4, 1)])
def test_packing_straight_from_a_pre_activation_equals_packing_its_samples(shape) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
    assert torch.equal(pack_pre_activation(x), pack_bits(pattern_samples(x)))
    assert torch.equal(pack_pre_activation(x.to(torch.float64)), pack_bits(pattern_samples(x)))


def test_hash_is_injective_on_all_10_bit_patterns_and_stable() -> None:
    rows = torch.tensor(list(itertools.product([False, True], repeat=10)))
    keys = hash_words(pack_bits(rows))
    assert len(torch.unique(keys)) == 1024
    assert torch.equal(keys, hash_words(pack_bits(rows)))
    # Zero words in different numbers are different patterns (different widths).
    assert hash_words(torch.zeros(1, 1, dtype=torch.int64)) != hash_words(
        torch.zeros(1, 2, dtype=torch.int64)
    )


def test_inplace_relu_inputs_are_recorded_before_they_are_overwritten() -> None:
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(inplace=True))
    x = torch.randn(20, 3)
    expected = pack_bits(net[0](x) > 0).flatten()
    words = capture_patterns(net, x)["1"]
    assert torch.equal(words.flatten(), expected)


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)
        self.act = ActivationMarker()
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.act(self.fc(x))))


def test_activation_marker_records_functional_activations() -> None:
    net = _Functional()
    assert list(activation_layers(net)) == ["act"]
    x = torch.randn(7, 2)
    words = capture_patterns(net, x)
    assert set(words) == {"act"}
    assert torch.equal(words["act"], pack_bits(net.fc(x) > 0))
    assert torch.equal(net(x), net.out(F.relu(net.fc(x))))  # the marker changes nothing


def test_capture_patterns_shapes_layers_and_leaves_no_hooks() -> None:
    net = nn.Sequential(nn.Conv2d(1, 70, 3), nn.ReLU(), nn.Conv2d(70, 4, 1), nn.LeakyReLU())
    words = capture_patterns(net, torch.randn(2, 1, 5, 5))
    assert words["1"].shape == (2 * 3 * 3, 2) and words["3"].shape == (18, 1)
    assert all(not m._forward_pre_hooks for m in net.modules())
    assert set(capture_patterns(net, torch.randn(1, 1, 5, 5), layers=["3"])) == {"3"}
    with pytest.raises(ConfigError, match="'relu9' is not an activation layer; valid layers: 1, 3"):
        capture_patterns(net, torch.randn(1, 1, 5, 5), layers=["relu9"])
