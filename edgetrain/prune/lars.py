"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg, "Large Batch Training of
Convolutional Networks", 2017).

With adaptive batch sizes the batch grows as the network shrinks; linear LR scaling
breaks down for large batches, LARS keeps each layer's step proportional to its weight
norm instead.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(4, 2)
    >>> opt = LARS(net.parameters(), lr=0.1, weight_decay=5e-4)
    >>> net(torch.randn(8, 4)).pow(2).mean().backward()
    >>> opt.step()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from edgetrain.engine.optim import OPTIMIZERS
from edgetrain.errors import EdgetrainError

__all__ = ["LARS", "lars"]

Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a per-layer (per parameter tensor) trust ratio.

    For every parameter tensor ``w`` with gradient ``g``, learning rate ``lr``, trust
    coefficient ``tau``, weight decay ``beta`` and momentum ``m``::

        local_lr = lr * tau * ||w|| / (||g|| + beta * ||w|| + eps)   if ||w|| > 0 and ||g|| > 0
        local_lr = lr                                                 otherwise
        v = m * v + local_lr * (g + beta * w)                         (v starts at 0)
        w = w - v

    (norms are L2 norms over the whole tensor). With ``exclude_bias_and_bn`` (default),
    1-D tensors (biases, batch-norm gamma/beta) skip both the trust ratio and the weight
    decay: they follow plain SGD with momentum, ``v = m * v + lr * g; w = w - v``.

    Args:
        params: parameters or parameter groups (groups may override any option).
        lr: base learning rate.
        momentum: momentum ``m``.
        weight_decay: L2 weight decay ``beta`` (also in the trust ratio's denominator).
        trust_coefficient: ``tau``, how far one step may move a layer relative to its norm.
        eps: added to the trust ratio's denominator against division by zero.
        exclude_bias_and_bn: plain SGD-momentum (no trust ratio, no weight decay) for
            1-D tensors.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        >>> opt = LARS(net.parameters(), lr=1.0, momentum=0.9, trust_coefficient=0.001)
        >>> net(torch.randn(8, 4)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-9,
        exclude_bias_and_bn: bool = True,
    ) -> None:
        checks = {
            "lr": (lr, lr > 0, "> 0"),
            "momentum": (momentum, momentum >= 0, ">= 0"),
            "weight_decay": (weight_decay, weight_decay >= 0, ">= 0"),
            "trust_coefficient": (trust_coefficient, trust_coefficient > 0, "> 0"),
            "eps": (eps, eps >= 0, ">= 0"),
        }
        for name, (value, ok, bound) in checks.items():
            if not ok:
                raise EdgetrainError(f"LARS: {name} must be {bound}, got {value}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "exclude_bias_and_bn": exclude_bias_and_bn,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (optional).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, beta = group["lr"], group["momentum"], group["weight_decay"]
            tau, eps = group["trust_coefficient"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise EdgetrainError(
                        "LARS does not support sparse gradients; use a dense embedding or SGD"
                    )
                if group["exclude_bias_and_bn"] and p.dim() <= 1:
                    update = grad.mul(lr)
                else:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    trusted = lr * tau * w_norm / (g_norm + beta * w_norm + eps)
                    local_lr = torch.where((w_norm > 0) & (g_norm > 0), trusted, lr)
                    update = grad.add(p, alpha=beta).mul_(local_lr)
                if m != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = update.clone()
                    else:
                        buf.mul_(m).add_(update)
                    update = buf
                p.sub_(update)
        return loss


@OPTIMIZERS.register("lars")
def lars(
    params: Params,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 1e-9,
    exclude_bias_and_bn: bool = True,
) -> LARS:
    """LARS: SGD-momentum with a per-layer trust ratio (You et al., 2017), for large batches."""
    return LARS(
        params,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        eps=eps,
        exclude_bias_and_bn=exclude_bias_and_bn,
    )
