"""LARS: the per-layer trust ratio against a hand computation, exclusions, fallbacks."""

from __future__ import annotations

import pytest
import torch

from edgetrain.errors import EdgetrainError
from edgetrain.prune.lars import LARS


def _params(w: list, b: list) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    return (
        torch.nn.Parameter(torch.tensor(w, dtype=torch.float64)),
        torch.nn.Parameter(torch.tensor(b, dtype=torch.float64)),
    )


def _grads(w: torch.Tensor, b: torch.Tensor, gw: list, gb: list) -> None:
    w.grad = torch.tensor(gw, dtype=torch.float64)
    b.grad = torch.tensor(gb, dtype=torch.float64)


def test_two_steps_match_a_hand_computation() -> None:
    # lr 0.1, tau 0.5, weight decay 0.1, momentum 0.9; w is 2-D (adapted), b is 1-D
    # (plain SGD-momentum). Same gradients in both steps.
    w, b = _params([[3.0, 4.0], [0.0, 0.0]], [1.0, -1.0])
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.1, trust_coefficient=0.5, eps=0.0)
    grads = ([[0.6, 0.8], [0.0, 0.0]], [0.5, 0.5])

    # step 1: ||w|| = 5, ||g|| = 1: local_lr = 0.1*0.5*5 / (1 + 0.1*5) = 1/6
    #   v = (g + 0.1 w)/6 = [0.9, 1.2]/6 = [0.15, 0.2]; w = [2.85, 3.8]
    #   bias: v = 0.1*0.5 = 0.05; b = [0.95, -1.05]
    _grads(w, b, *grads)
    opt.step()
    assert torch.allclose(w, torch.tensor([[2.85, 3.8], [0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(b, torch.tensor([0.95, -1.05], dtype=torch.float64))

    # step 2: ||w|| = 4.75: local_lr = 0.1*0.5*4.75 / (1 + 0.475) = 0.2375/1.475
    #   g + 0.1 w = [0.885, 1.18] -> local_lr * that = [0.1425, 0.19]
    #   v = 0.9*[0.15, 0.2] + [0.1425, 0.19] = [0.2775, 0.37]; w = [2.5725, 3.43]
    #   bias: v = 0.9*0.05 + 0.05 = 0.095; b = [0.855, -1.145]
    _grads(w, b, *grads)
    opt.step()
    assert torch.allclose(w, torch.tensor([[2.5725, 3.43], [0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(b, torch.tensor([0.855, -1.145], dtype=torch.float64))


def test_zero_weight_or_gradient_norm_falls_back_to_the_plain_learning_rate() -> None:
    w, b = _params([[0.0, 0.0]], [0.0])
    opt = LARS([w], lr=0.1, momentum=0.0, weight_decay=0.1, trust_coefficient=0.001)
    w.grad = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    opt.step()  # ||w|| = 0: local_lr = lr
    assert torch.allclose(w, torch.tensor([[-0.1, 0.2]], dtype=torch.float64))

    w2, _ = _params([[3.0, 4.0]], [0.0])
    opt = LARS([w2], lr=0.1, momentum=0.0, weight_decay=0.1, trust_coefficient=0.001)
    w2.grad = torch.zeros_like(w2)
    opt.step()  # ||g|| = 0: local_lr = lr, the step is weight decay only
    assert torch.allclose(w2, torch.tensor([[3.0 - 0.03, 4.0 - 0.04]], dtype=torch.float64))


def test_bias_is_adapted_when_not_excluded() -> None:
    w, b = _params([[1.0]], [3.0, 4.0])
    opt = LARS([b], lr=0.1, momentum=0.0, trust_coefficient=0.5, eps=0.0, exclude_bias_and_bn=False)
    b.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    opt.step()  # local_lr = 0.1*0.5*5/1 = 0.25
    assert torch.allclose(b, torch.tensor([3.0 - 0.15, 4.0 - 0.2], dtype=torch.float64))


def test_param_groups_lr_changes_and_closure() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 1))
    x = torch.randn(16, 4)
    opt = LARS(net.parameters(), lr=1.0, trust_coefficient=0.02)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = net(x).pow(2).mean()
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(20):
        opt.step(closure)
    assert closure().item() < first
    opt.param_groups[0]["lr"] = 0.0  # a scheduler's change is honoured
    before = [p.clone() for p in net.parameters()]
    opt.state.clear()
    opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr": 0.1, "momentum": -0.1}, "momentum must be >= 0"),
        ({"lr": 0.1, "trust_coefficient": 0.0}, "trust_coefficient must be > 0"),
        ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay must be >= 0"),
    ],
)
def test_bad_options_raise_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(EdgetrainError, match=match):
        LARS([torch.nn.Parameter(torch.ones(2, 2))], **kwargs)


def test_lars_is_buildable_by_name() -> None:
    from edgetrain.engine.optim import build_optimizer

    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), "lars", lr=0.2, weight_decay=1e-4)
    assert isinstance(opt, LARS)
    assert opt.defaults["lr"] == 0.2 and opt.defaults["trust_coefficient"] == 0.001
