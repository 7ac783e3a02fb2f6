"""The temperature probe: AP distance, temperature, and the exact undo of probe steps."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgetrain.diagnostics import (
    LRSensitivity,
    StepProbe,
    TrainingSnapshot,
    ap_distance,
    network_distance,
    probe_patterns,
    probe_rates,
    temperature,
)
from edgetrain.engine import Callback, Trainer
from edgetrain.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


class _Noise(nn.Module):
    """Additive Gaussian noise in train mode: draws random numbers in every forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x) if self.training else x


def _net(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU, dropout, noise, linear-ReLU, linear: every stateful part in miniature."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        _Noise(),
        nn.Linear(6 * 8 * 8, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # it aliases live tensors
    }


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bit-for-bit equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _optimizer(kind: str, params: Any) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    return torch.optim.Adam(params, lr=1e-3)


def test_ap_distance_is_the_share_of_changed_rows_and_temperature_its_log() -> None:
    before = {"a": torch.tensor([[1, 0], [2, 0], [3, 7], [4, 0]]), "b": torch.tensor([[5], [6]])}
    after = {"a": torch.tensor([[1, 0], [2, 1], [3, 7], [4, 0]]), "b": torch.tensor([[0], [1]])}
    d = ap_distance(before, after)
    assert d == {"a": 0.25, "b": 1.0}  # a change in any word changes the whole pattern
    assert network_distance(d) == 0.625
    assert temperature(0.0) == 0.0
    assert temperature(0.75) == pytest.approx(2.0)
    assert temperature(1.0) == math.inf
    with pytest.raises(ValueError, match="same batch"):
        ap_distance(before, {"a": after["a"][:2], "b": after["b"]})


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_snapshot_restores_weights_buffers_grads_optimizer_and_rng_exactly(kind: str) -> None:
    net = _net()
    opt = _optimizer(kind, net.parameters())
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    for _ in range(2):  # optimizer state exists (momentum / moments, step counts)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    before = _state(net, opt)
    snap = TrainingSnapshot(net, opt)
    draws = (torch.rand(3), random.random(), np.random.rand())
    for lr in (10.0, 0.3):  # several changes, restored more than once
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        snap.restore()
        _assert_same(_state(net, opt), before)
    assert torch.equal(torch.rand(3), draws[0])
    assert random.random() == draws[1] and np.random.rand() == draws[2]


def test_probe_patterns_use_batch_statistics_and_leave_no_trace() -> None:
    net = _net().train()
    net[3].p = 0.9  # heavy dropout: it must be off while measuring
    x = torch.randn(8, 1, 8, 8)
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    first = probe_patterns(net, x)
    second = probe_patterns(net, x)
    _assert_same(first, second)  # dropout off, noise seeded alike: the same network twice
    assert list(first) == ["2", "7"]
    assert first["2"].shape == (8 * 8 * 8, 1)  # every conv position is a sample
    _assert_same({k: v.clone() for k, v in net.state_dict().items()}, buffers)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in net.modules())
    net.eval()  # an eval-mode model is measured in train mode and handed back in eval mode
    assert probe_patterns(net, x)["2"].equal(first["2"])
    assert not any(m.training for m in net.modules())


def test_step_probe_distance_grows_with_the_rate_and_is_zero_at_rate_zero() -> None:
    net = _net()
    opt = _optimizer("sgd", net.parameters())
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
    nn.functional.cross_entropy(net(x), y).backward()
    before = _state(net, opt)
    rates = [0.0, 1e-4, 1e-2, 1.0, 100.0]
    per_rate = probe_rates(net, opt, x, rates)
    _assert_same(_state(net, opt), before)
    mean = [network_distance(d) for d in per_rate]
    assert mean[0] == 0.0
    assert mean == sorted(mean)
    assert mean[-1] > 0.5
    # Repeating a probe gives the same answer: the state is the same each time.
    with StepProbe(net, opt, x) as probe:
        assert probe.distance(1.0) == per_rate[3]
        assert probe.probes == 1


def test_step_probe_refuses_a_model_without_activations() -> None:
    net = nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="no activation layers"):
        StepProbe(net, opt, torch.randn(2, 4))


class _ProbeEveryStep(Callback):
    """Probes the pending step at three rates before every optimizer step."""

    def before_forward(self, trainer, model, inputs):
        self.inputs = inputs

    def before_optimizer_step(self, trainer, model, optimizer):
        probe_rates(model, optimizer, self.inputs, [1e-3, 1.0, 50.0])


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_training_with_probes_is_bit_identical_to_training_without(kind, make_blobs) -> None:
    """Probing (every step, and the LR sweep at fixed times) changes nothing in training:
    weights, batch-norm statistics, optimizer state and the random stream (dropout and
    the noise layer draw from it, also in the probes' forwards)."""
    data, val = make_blobs(96, seed=0), make_blobs(32, seed=1)

    def train(callbacks: list[Callback]) -> Trainer:
        trainer = Trainer(
            _net(),
            data,
            val_data=val,
            optimizer=lambda p: _optimizer(kind, p),
            batch_size=16,
            callbacks=callbacks,
            device="cpu",
            progress=False,
            seed=3,
        )
        trainer.fit(2)
        return trainer

    plain = train([])
    probed = train([_ProbeEveryStep(), LRSensitivity(rates=6, at_steps=(3,))])
    _assert_same(plain.model.state_dict(), probed.model.state_dict())
    _assert_same(plain.optimizer.state_dict(), probed.optimizer.state_dict())
    assert [r["train_loss"] for r in plain.state.history] == [
        r["train_loss"] for r in probed.state.history
    ]


def test_network_temperature_and_its_distance():
    from edgetrain.diagnostics import network_temperature, temperature_distance

    assert network_temperature({"a": 0.5, "b": 0.875}) == pytest.approx(2.0)
    assert temperature_distance({"a": 0.5, "b": 0.875}) == pytest.approx(0.75)
    # one saturated layer: infinite without the batch's resolution, finite with it
    assert temperature_distance({"a": 0.5, "b": 1.0}) == 1.0
    assert temperature_distance({"a": 0.5, "b": 1.0}, samples=8) == pytest.approx(1 - 2**-2.5)
    # every layer saturated: every pattern changed, whatever the batch
    assert temperature_distance({"a": 1.0, "b": 1.0}, samples=8) == 1.0
    with pytest.raises(ValueError, match="no layer distances"):
        network_temperature({})
