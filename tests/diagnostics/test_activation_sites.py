"""Activation sites: functional activations are found, named and recorded like modules."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.diagnostics import (
    ActCoolLR,
    PatternRecorder,
    StepProbe,
    activation_cells,
    activation_layers,
    capture_patterns,
    pack_bits,
)
from edgetrain.diagnostics.sites import FunctionalActivation, activation_layouts
from edgetrain.errors import ConfigError
from edgetrain.models import create


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        return torch.relu(self.conv(y)) + x.relu()  # second and third relu calls


class _Mixed(nn.Module):
    """Functional activations in nested and root forwards, next to activation modules."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = _Block()
        self.act = nn.ReLU()  # a module: its own F.relu call is not a second site
        self.fc = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.block(x).mean((2, 3))
        return self.head(F.gelu(self.fc(x)))


def test_functional_sites_are_found_in_forward_order_and_named_by_owner() -> None:
    net = _Mixed()
    assert list(activation_layers(net)) == ["act"]  # no shape: modules only
    sites = activation_layers(net, input_shape=(3, 8, 8))
    assert list(sites) == [
        "act",
        "block.relu()",
        "block.relu()#2",
        "block.relu()#3",
        "gelu()",
    ]
    assert sites["block.relu()#2"] == FunctionalActivation("block", "relu", 2)
    assert sites["act"] is net.act
    layouts = activation_layouts(net, sites, (3, 8, 8))
    assert layouts["gelu()"] == -1 and layouts["block.relu()"] == 1


def test_functional_patterns_are_the_signs_of_their_inputs() -> None:
    torch.manual_seed(0)
    net = _Mixed()
    x = torch.randn(2, 3, 8, 8)
    words = capture_patterns(net, x)
    stem = F.relu(net.stem(x))
    first = net.block.conv(stem)
    assert torch.equal(words["block.relu()"], pack_bits(first.movedim(1, -1).reshape(-1, 4) > 0))
    hidden = net.fc(net.block(stem).mean((2, 3)))
    assert torch.equal(words["gelu()"], pack_bits(hidden > 0))
    with PatternRecorder(net, mode="exact") as rec:
        net(x)
    assert rec.layer_names == list(words)
    assert {n: int(c.sum()) for n, c in rec.counts().items()} == {
        n: w.shape[0] for n, w in words.items()
    }


def test_recording_leaves_outputs_hooks_and_modes_as_they_were() -> None:
    net = _Mixed()
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    for shape in (None, (3, 8, 8)):  # sites learned at the first forward, or up front
        rec = PatternRecorder(net, input_shape=shape)
        with rec:
            assert torch.equal(net(x), expected)
            assert torch.equal(net(x), expected)
        assert {int(c.sum()) for n, c in rec.counts().items() if n.startswith("block")} == {256}
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in net.modules())
    assert torch.equal(net(x), expected)
    assert not torch._C._is_torch_function_mode_enabled()


def test_only_modules_sites_add_no_call_tracking() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 2))
    with PatternRecorder(net) as rec:
        net(torch.randn(1, 1, 5, 5))  # first forward: every call is watched
        assert sum(len(m._forward_hooks) for m in net.modules()) == 0  # then dropped
        net(torch.randn(1, 1, 5, 5))
    assert rec.layer_names == ["1"] and int(rec.counts()["1"].sum()) == 18


def test_a_deep_copy_records_nothing_for_the_original() -> None:
    net = _Mixed()
    with PatternRecorder(net, input_shape=(3, 8, 8)) as rec:
        copy.deepcopy(net)(torch.randn(3, 3, 8, 8))
        net(torch.randn(1, 3, 8, 8))
    assert int(rec.counts()["gelu()"].sum()) == 1


def test_named_functional_layers_are_checked_and_recorded_alone() -> None:
    net = _Mixed()
    with PatternRecorder(net, layers=["gelu()"]) as rec:
        net(torch.randn(2, 3, 8, 8))
    assert rec.layer_names == ["gelu()"]
    with (
        pytest.raises(
            ConfigError, match=r"'relu\(\)' is not an activation layer; valid layers: act"
        ),
        PatternRecorder(net, layers=["relu()"]),
    ):
        net(torch.randn(2, 3, 8, 8))


def test_a_model_without_any_activation_is_refused_in_one_line() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ConfigError) as err:
        PatternRecorder(net, input_shape=(2,))
    message = str(err.value)
    assert "\n" not in message and "Sequential has no activation layers" in message
    assert "ActivationMarker" in message


@pytest.mark.parametrize("name", ["vit_tiny", "efficientnet_b0", "mobilenet_v3_small"])
def test_edge_zoo_models_with_smooth_or_functional_activations_record(name: str) -> None:
    model = create(name)
    with PatternRecorder(model) as rec:
        model(torch.randn(2, *model.input_shape))
    assert rec.layer_names
    if name == "vit_tiny":  # TransformerEncoderLayer calls F.gelu: one pattern per token
        assert rec.layer_names[0] == "encoder.layers.0.gelu()"
        tokens = 2 * (64 + 1)  # 4x4 patches of 32x32 and a class token, per sample
        assert int(rec.counts()["encoder.layers.0.gelu()"].sum()) == tokens


def test_probe_cells_and_actcool_see_functional_sites() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), _Gelu(), nn.Linear(16, 2))
    x = torch.randn(32, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(net(x), torch.zeros(32, dtype=torch.long)).backward()
    with StepProbe(net, opt, x) as probe:
        assert probe.layers == ["1.gelu()"]
        assert 0.0 <= probe.distance(1.0)["1.gelu()"] <= 1.0
    picture = activation_cells(net, resolution=8)
    assert picture.layers == ("1.gelu()",)
    ActCoolLR()._check_sites(net, (2,))  # accepted: no "no activation layers" refusal


class _Gelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


def test_removing_the_watch_mid_forward_leaves_no_mode_behind():
    from edgetrain.diagnostics.sites import ActivationWatch

    net = _Mixed()
    sites = activation_layers(net, input_shape=(3, 8, 8))
    seen: list[str] = []
    watch = ActivationWatch(net, sites, lambda name, _x: seen.append(name))
    net.block.register_forward_pre_hook(lambda *_: watch.remove())
    net(torch.randn(1, 3, 8, 8))
    assert seen == ["act"]  # the calls after the removal are not watched
    assert not torch._C._is_torch_function_mode_enabled()
