"""Group lasso over output/input channels and the penalty-ratio rule for lambda."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgetrain import models
from edgetrain.errors import ConfigError

pytest.importorskip("torch_pruning")

from edgetrain.prune import PruneTrain, group_lasso, lasso_layers, penalty_lambda  # noqa: E402
from edgetrain.prune.group_lasso import EPS  # noqa: E402


class TwoLayer(nn.Module):
    """conv (2 -> 3, 2x2) -> global average pool -> linear (3 -> 2)."""

    input_shape = (2, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g))
            self.conv.weight[1] = 0.0  # an output group at exactly zero: eps keeps it finite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class ThreeLayer(TwoLayer):
    """TwoLayer with a middle linear (3 -> 3): the only layer grouped on both sides."""

    def __init__(self) -> None:
        super().__init__()
        self.mid = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mid(self.conv(x).mean((2, 3))))


def _norm(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values) + EPS)


def _hand_two_layer(net: TwoLayer, weighted: bool = False) -> float:
    """Plain Python: conv output groups (3 of 2*2*2 weights) + linear input groups (3 of 2)."""
    conv = net.conv.weight.detach().tolist()  # [out][in][kh][kw]
    fc = net.fc.weight.detach().tolist()  # [out][in]
    out_groups = [[v for plane in conv[c] for row in plane for v in row] for c in range(3)]
    in_groups = [[fc[o][k] for o in range(2)] for k in range(3)]
    w_out = math.sqrt(8) if weighted else 1.0
    w_in = math.sqrt(2) if weighted else 1.0
    return w_out * sum(map(_norm, out_groups)) + w_in * sum(map(_norm, in_groups))


def _formula(layers: list[tuple[torch.Tensor, bool, bool]]) -> torch.Tensor:
    """The spec's formula written independently: sum over slices W[c] and W[:, k]."""
    total = torch.zeros((), dtype=torch.float64)
    for w, outputs, inputs in layers:
        if outputs:
            for c in range(w.shape[0]):
                total = total + torch.sqrt((w[c] ** 2).sum() + EPS)
        if inputs:
            for k in range(w.shape[1]):
                total = total + torch.sqrt((w[:, k] ** 2).sum() + EPS)
    return total


def _gl(model, **kw) -> float:
    return float(group_lasso(model, **kw).detach())


def test_lasso_layers_skip_the_first_inputs_and_the_last_outputs():
    layers = lasso_layers(ThreeLayer())
    assert [(x.name, x.outputs, x.inputs) for x in layers] == [
        ("conv", True, False),
        ("mid", True, True),
        ("fc", False, True),
    ]
    vgg = lasso_layers(models.create("vgg_small", input_size=8))
    assert [x.name for x in vgg] == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"]
    assert (vgg[0].inputs, vgg[-1].outputs) == (False, False)
    assert all(x.inputs and x.outputs for x in vgg[1:-1])


def test_group_lasso_matches_a_hand_computation():
    net = TwoLayer()
    assert _gl(net) == pytest.approx(_hand_two_layer(net), rel=1e-6)
    # the zero output group contributes sqrt(eps), not 0 and not NaN
    with torch.no_grad():
        net.conv.weight.zero_()
        net.fc.weight.zero_()
    assert _gl(net) == pytest.approx(6 * math.sqrt(EPS), rel=1e-6)


def test_weighted_group_lasso_scales_each_group_by_sqrt_of_its_size():
    net = TwoLayer()
    expected = _hand_two_layer(net, weighted=True)
    assert _gl(net, weighted=True) == pytest.approx(expected, rel=1e-6)
    assert _gl(net, weighted=True) > _gl(net)


def test_group_lasso_of_a_middle_layer_counts_both_sides():
    net = ThreeLayer()
    w = [m.weight.detach().double() for m in (net.conv, net.mid, net.fc)]
    expected = _formula([(w[0], True, False), (w[1], True, True), (w[2], False, True)])
    assert _gl(net) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("net_class", [TwoLayer, ThreeLayer])
def test_group_lasso_gradient_matches_autograd_of_the_formula(net_class):
    net = net_class()
    layers = lasso_layers(net)  # forward order found in float32, then the weights go float64
    net.double()
    flags = [(x.outputs, x.inputs) for x in layers]
    weights = [x.module.weight for x in layers]
    got = torch.autograd.grad(group_lasso(layers), weights)
    want = torch.autograd.grad(
        _formula([(w, o, i) for w, (o, i) in zip(weights, flags, strict=True)]), weights
    )
    for g, h in zip(got, want, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(got[0]).all()  # the all-zero output group has a finite gradient
    assert torch.equal(got[0][1], torch.zeros_like(got[0][1]))  # its own term: w/||w|| = 0


def test_group_lasso_accepts_the_precomputed_layer_list():
    net = models.create("resnet_cifar", stages=1, blocks=[1], widths=[4], input_size=8)
    layers = lasso_layers(net)
    assert _gl(layers) == _gl(net)
    assert group_lasso(layers).requires_grad


def test_group_lasso_of_a_single_layer_is_an_error():
    class One(nn.Module):
        input_shape = (3,)

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ConfigError, match="single layer"):
        group_lasso(One())
    with pytest.raises(ConfigError, match="no conv/linear layer"):
        lasso_layers(nn.Sequential(nn.ReLU()))


# ------------------------------------------------------------------ penalty ratio
@pytest.mark.parametrize(("ratio", "loss", "penalty"), [(0.2, 2.0, 100.0), (0.5, 1.3, 7.0)])
def test_penalty_lambda_makes_the_penalty_that_share_of_the_total(ratio, loss, penalty):
    lam = penalty_lambda(ratio, loss, penalty)
    assert lam == pytest.approx(ratio * loss / ((1 - ratio) * penalty))
    assert lam * penalty / (loss + lam * penalty) == pytest.approx(ratio)


def test_penalty_lambda_example_value():
    assert penalty_lambda(0.2, loss=2.0, penalty=100.0) == pytest.approx(0.005)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_penalty_ratio_outside_zero_one_is_an_error(ratio):
    with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
        penalty_lambda(ratio, 1.0, 1.0)
    with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
        PruneTrain(ratio=ratio)


def test_penalty_lambda_of_a_zero_penalty_is_an_error():
    with pytest.raises(ConfigError, match="penalty is zero"):
        penalty_lambda(0.2, 1.0, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"interval": 0}, "interval must be >= 1"),
        ({"threshold": -1e-3}, "threshold must be >= 0"),
        ({"penalty": "foo"}, "penalty must be one of loss, grad"),
    ],
)
def test_prunetrain_rejects_bad_settings(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        PruneTrain(**kwargs)
