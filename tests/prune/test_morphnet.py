"""MorphNet: the resource-aware regulariser by hand, the width-multiplier search, resizing
channel groups, the callback in a Trainer, and the shrink/expand loop."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from edgetrain import models
from edgetrain.engine import Trainer
from edgetrain.errors import ConfigError

pytest.importorskip("torch_pruning")

from edgetrain.prune import (  # noqa: E402
    MorphNet,
    MorphNetStructure,
    morphnet_iterate,
    resize_groups,
    width_multiplier,
)

pytestmark = pytest.mark.usefixtures("single_thread")

THRESHOLD = 0.2
GAMMA1 = [0.5, -0.1, 1.5, 0.3]  # alive above 0.2: 3 channels
GAMMA2 = [0.05, -0.8, 0.25, 0.0, 1.0, 0.15]  # alive: 3 channels


class ConvBNNet(nn.Module):
    """conv1 3x3 (2->4) - bn1 - relu - conv2 3x3 stride 2 (4->6) - bn2 - relu - pool - fc."""

    def __init__(self, widths: tuple[int, int] = (4, 6), batch_norm: bool = True) -> None:
        super().__init__()
        self.input_shape = (2, 6, 6)
        w1, w2 = widths
        norm = nn.BatchNorm2d if batch_norm else lambda _c: nn.Identity()
        self.conv1 = nn.Conv2d(2, w1, 3, padding=1, bias=not batch_norm)
        self.bn1 = norm(w1)
        self.conv2 = nn.Conv2d(w1, w2, 3, stride=2, padding=1, bias=not batch_norm)
        self.bn2 = norm(w2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def _net(seed: int = 0, **kw: Any) -> ConvBNNet:
    torch.manual_seed(seed)
    net = ConvBNNet(**kw)
    if kw.get("batch_norm", True):
        with torch.no_grad():
            net.bn1.weight.copy_(torch.tensor(GAMMA1))
            net.bn2.weight.copy_(torch.tensor(GAMMA2))
    return net


def _group(structure: MorphNetStructure, root: str) -> int:
    return next(i for i, g in enumerate(structure.groups) if g.root == root)


def _alive(gammas: list[float], threshold: float) -> int:
    return max(1, sum(abs(g) > threshold for g in gammas))


def _hand_penalty(cost: str, threshold: float) -> float:
    s1, s2 = sum(abs(g) for g in GAMMA1), sum(abs(g) for g in GAMMA2)
    a1, a2 = _alive(GAMMA1, threshold), _alive(GAMMA2, threshold)
    # C_j = kh*kw (size) or kh*kw*output positions (flops): 6x6 after conv1, 3x3 after conv2
    c1, c2, c_fc = (9 * 36, 9 * 9, 1) if cost == "flops" else (9, 9, 1)
    return (
        c1 * (2 * s1)  # conv1: its 2 input (image) channels are fixed
        + c2 * (a1 * s2 + a2 * s1)  # conv2: in group 1, out group 2
        + c_fc * (3 * s2)  # fc: its 3 outputs are fixed
    )


# ------------------------------------------------------------------ structure and penalty
def test_structure_has_the_groups_kernels_and_output_positions():
    s = MorphNetStructure.of(_net())
    assert sorted(g.root for g in s.groups) == ["conv1", "conv2"]
    assert s.widths()[_group(s, "conv1")] == 4 and s.widths()[_group(s, "conv2")] == 6
    layers = {layer.name: layer for layer in s.layers}
    assert (layers["conv1"].kernel, layers["conv1"].positions) == (9, 36)
    assert (layers["conv2"].kernel, layers["conv2"].positions) == (9, 9)
    assert (layers["fc"].kernel, layers["fc"].positions) == (1, 1)
    assert layers["conv1"].in_group is None and layers["fc"].out_group is None
    assert layers["conv2"].in_group == _group(s, "conv1") == layers["conv1"].out_group


@pytest.mark.parametrize("cost", ["size", "flops"])
@pytest.mark.parametrize("threshold", [THRESHOLD, 0.01, 2.0])
def test_penalty_equals_the_hand_computation(cost, threshold):
    s = MorphNetStructure.of(_net())
    value = s.penalty(cost, threshold)
    assert float(value.detach()) == pytest.approx(_hand_penalty(cost, threshold), rel=1e-6)


def test_alive_counts_channels_above_the_threshold():
    s = MorphNetStructure.of(_net())
    alive = s.alive(THRESHOLD)
    assert alive[_group(s, "conv1")] == 3 and alive[_group(s, "conv2")] == 3
    assert s.alive(10.0) == [1, 1]  # at least one channel stays


def test_cost_of_widths_is_sum_of_coefficient_times_channels_in_and_out():
    s = MorphNetStructure.of(_net())
    w = [0, 0]
    w[_group(s, "conv1")], w[_group(s, "conv2")] = 3, 5
    assert s.cost(w, "size") == 9 * 2 * 3 + 9 * 3 * 5 + 1 * 5 * 3
    assert s.cost(w, "flops") == 9 * 36 * 2 * 3 + 9 * 9 * 3 * 5 + 1 * 5 * 3
    # the full widths give the conv/linear weight count (biases are not counted)
    net = _net()
    weights = sum(m.weight.numel() for m in (net.conv1, net.conv2, net.fc))
    assert s.cost(s.widths(), "size") == weights


def test_gradient_flows_to_the_batch_norm_gammas_only():
    net = _net()
    s = MorphNetStructure.of(net)
    s.penalty("size", THRESHOLD).backward()
    a1, a2 = _alive(GAMMA1, THRESHOLD), _alive(GAMMA2, THRESHOLD)
    sign1, sign2 = torch.tensor(GAMMA1).sign(), torch.tensor(GAMMA2).sign()
    # dG/dgamma1 = sign * (9*2 + 9*a2); dG/dgamma2 = sign * (9*a1 + 1*3)
    torch.testing.assert_close(net.bn1.weight.grad, sign1 * (18 + 9 * a2))
    torch.testing.assert_close(net.bn2.weight.grad, sign2 * (9 * a1 + 3))
    assert net.conv1.weight.grad is None and net.conv2.weight.grad is None
    assert net.bn1.bias.grad is None


def test_groups_without_a_single_batch_norm_use_weight_norms():
    net = _net(batch_norm=False)
    s = MorphNetStructure.of(net)
    g1 = s.groups[_group(s, "conv1")]
    hand = (net.conv1.weight.pow(2).sum((1, 2, 3)) + net.conv2.weight.pow(2).sum((0, 2, 3))).sqrt()
    torch.testing.assert_close(s.strengths(g1), hand, rtol=1e-5, atol=1e-6)
    g2 = s.groups[_group(s, "conv2")]
    hand2 = (net.conv2.weight.pow(2).sum((1, 2, 3)) + net.fc.weight.pow(2).sum(0)).sqrt()
    torch.testing.assert_close(s.strengths(g2), hand2, rtol=1e-5, atol=1e-6)
    s.penalty("size", 0.0).backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0


def test_residual_groups_tied_at_an_add_use_weight_norms():
    torch.manual_seed(0)
    net = models.create(
        "resnet_cifar",
        stages=1,
        blocks=[1],
        widths=[4],
        in_channels=1,
        num_classes=3,
        input_size=8,
    )
    s = MorphNetStructure.of(net)
    for group in s.groups:
        norms = [m for m in group.members if isinstance(m.module, nn.BatchNorm2d)]
        if len(norms) == 1:  # the inner channels of the block: their gamma
            torch.testing.assert_close(s.strengths(group), norms[0].module.weight.abs())
        else:  # the residual channels: several batch-norms, the gamma coupling breaks
            assert len(norms) > 1
            expected = group.channel_norms().float()
            torch.testing.assert_close(s.strengths(group), expected, rtol=1e-5, atol=1e-6)
    assert any(
        len([m for m in g.members if isinstance(m.module, nn.BatchNorm2d)]) > 1 for g in s.groups
    )
    assert float(s.penalty("flops").detach()) > 0


# ------------------------------------------------------------------ width multiplier
@pytest.mark.parametrize("cost", ["size", "flops"])
@pytest.mark.parametrize("fraction", [0.3, 0.7, 2.5])
def test_width_multiplier_is_the_largest_within_the_budget(cost, fraction):
    s = MorphNetStructure.of(_net())
    widths = [3, 2]
    budget = fraction * s.cost(s.widths(), cost)
    tol = 1e-3
    w, scaled = width_multiplier(s, widths, budget, cost, tol=tol)

    def at(m: float) -> list[int]:
        return [max(1, math.ceil(m * c - 1e-9)) for c in widths]

    assert scaled == at(w)
    assert s.cost(scaled, cost) <= budget < s.cost(at(w + tol), cost)
    # no larger multiplier on a fine grid fits either
    grid = [w + tol * (1 + k / 4) for k in range(4000)]
    assert all(s.cost(at(m), cost) > budget for m in grid)


def test_width_multiplier_below_the_smallest_network_is_an_error():
    s = MorphNetStructure.of(_net())
    smallest = s.cost([1, 1], "flops")
    with pytest.raises(ConfigError, match="below the smallest network"):
        width_multiplier(s, [3, 2], smallest - 1, "flops")
    w, scaled = width_multiplier(s, [3, 2], smallest, "flops")
    assert scaled == [1, 1] and w > 0
    with pytest.raises(ConfigError, match="cost must be one of size, flops"):
        width_multiplier(s, [3, 2], 1e6, "latency")


# ------------------------------------------------------------------ resize
def test_resize_shrinks_keeping_the_strongest_channels_and_grows_to_targets():
    net = _net()
    s = MorphNetStructure.of(net)
    old_conv1, old_conv2 = net.conv1.weight.detach().clone(), net.conv2.weight.detach().clone()
    targets = [0, 0]
    targets[_group(s, "conv1")], targets[_group(s, "conv2")] = 2, 9
    out = resize_groups(net, targets, structure=s)
    assert out is net
    keep = [0, 2]  # |gamma1| = 0.5, 0.1, 1.5, 0.3: the two strongest
    torch.testing.assert_close(net.bn1.weight.detach(), torch.tensor(GAMMA1)[keep])
    torch.testing.assert_close(net.conv1.weight.detach(), old_conv1[keep])
    torch.testing.assert_close(net.conv2.weight.detach()[:6], old_conv2[:, keep])
    assert net.conv2.out_channels == 9 and net.bn2.num_features == 9
    assert net.fc.in_features == 9
    after = MorphNetStructure.of(net)
    widths = dict(zip([g.root for g in after.groups], after.widths(), strict=True))
    assert widths == {"conv1": 2, "conv2": 9}
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(5, 2, 6, 6))
    assert y.shape == (5, 3) and torch.isfinite(y).all()
    net.train()
    net(torch.randn(2, 2, 6, 6)).sum().backward()  # still trains


def test_resize_with_the_wrong_number_of_widths_is_an_error():
    with pytest.raises(ConfigError, match="3 widths for 2 channel groups"):
        resize_groups(_net(), [1, 2, 3])


# ------------------------------------------------------------------ callback and loop
@pytest.fixture
def data(make_blobs):
    return make_blobs(32, num_classes=3, shape=(2, 6, 6), seed=0)


def _fit(model: nn.Module, data: Any, callbacks: list, lr: float = 0.05, epochs: int = 1):
    trainer = Trainer(
        model,
        data,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr),
        batch_size=32,
        device="cpu",
        progress=False,
        seed=1,
        callbacks=callbacks,
    )
    return trainer.fit(epochs)


def test_morphnet_callback_adds_lambda_g_to_the_loss_and_logs(data):
    strength = 1e-3
    with_g = _fit(_net(), data, [MorphNet(strength, "size", THRESHOLD)], lr=0.0).history[0]
    without = _fit(_net(), data, [], lr=0.0).history[0]
    assert with_g["morphnet_penalty"] == pytest.approx(_hand_penalty("size", THRESHOLD))
    assert with_g["train_loss"] == pytest.approx(
        without["train_loss"] + strength * with_g["morphnet_penalty"], rel=1e-5
    )
    s = MorphNetStructure.of(_net())
    assert with_g["morphnet_alive"] == s.alive(THRESHOLD)
    assert with_g["morphnet_cost"] == s.cost(s.alive(THRESHOLD), "size")
    assert with_g["morphnet_full_cost"] == s.cost(s.widths(), "size")


def test_morphnet_callback_logs_every_epoch_and_shrinks_gammas(data):
    history = _fit(_net(), data, [MorphNet(1e-3, "flops", THRESHOLD)], epochs=2).history
    for r in history:
        assert {"morphnet_penalty", "morphnet_alive", "morphnet_cost"} <= r.keys()
        assert r["morphnet_cost"] <= r["morphnet_full_cost"]
    assert history[1]["morphnet_penalty"] < history[0]["morphnet_penalty"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"cost": "latency"}, "cost must be one of size, flops"), ({"strength": 0}, "> 0")],
)
def test_morphnet_bad_settings(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        MorphNet(**kwargs)


def test_morphnet_iterate_proposes_widths_within_the_budget(data):
    full = MorphNetStructure.of(_net())
    budget = 0.5 * full.cost(full.widths(), "flops")
    seen: list[list[int]] = []

    def train(model: nn.Module, callback: MorphNet) -> Any:
        seen.append(MorphNetStructure.of(model).widths())
        return _fit(model, data, [callback])

    rounds = morphnet_iterate(
        lambda: _net(), train, budget, rounds=3, strength=1e-2, cost="flops", threshold=THRESHOLD
    )
    assert len(rounds) == 3
    for i, r in enumerate(rounds):
        s = MorphNetStructure.of(_net())
        assert r.cost == s.cost(r.next_widths, "flops") <= budget
        assert r.widths == seen[i]
        assert all(1 <= a <= w for a, w in zip(r.alive, r.widths, strict=True))
        assert r.multiplier > 0
        assert "morphnet_penalty" in r.result.history[0]
    # each round trains the widths the previous one proposed
    assert seen[0] == full.widths()
    assert seen[1] == rounds[0].next_widths and seen[2] == rounds[1].next_widths
