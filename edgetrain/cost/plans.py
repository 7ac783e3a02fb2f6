"""Training-step plans: which parameters one step updates.

A plan is a collection of module names (as in ``model.named_modules()``, or ``re:``
patterns) whose parameters are updated in that step; everything else is frozen for the
step. ``(model)`` names the parameters that sit on the root module itself. Shorthands:
:data:`ALL` (every parameter that requires grad: conventional training), ``"last:N"``
and ``"first:N"`` (the last or first N weight layers in forward order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Union

from torch import nn

from edgetrain._modules import select_modules
from edgetrain.cost.tracer import ROOT
from edgetrain.errors import EdgetrainError

__all__ = ["ALL", "Plan", "all_trainable", "plan_label", "resolve_plan"]

ALL = "all"
"""Conventional training: every parameter with ``requires_grad``."""

Plan = Union[str, Iterable[str]]  # noqa: UP007 - readable alias


def all_trainable(model: nn.Module) -> list[str]:
    """Names of the modules owning at least one parameter that requires grad.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> _ = net[0].requires_grad_(False)
        >>> all_trainable(net)
        ['2']
    """
    return [
        n
        for n, m in model.named_modules()
        if n and any(p.requires_grad for p in m.parameters(recurse=False))
    ]


def resolve_plan(model: nn.Module, plan: Plan, layer_order: Sequence[str]) -> frozenset[str]:
    """Parameter names updated by ``plan``.

    Args:
        model: the model.
        plan: :data:`ALL`, ``"last:N"``, ``"first:N"``, or module names / ``re:``
            patterns (``(model)``: the root module's own parameters).
        layer_order: parameter-owning modules in forward order (for ``last:N``).

    Raises:
        EdgetrainError: one line for an unknown layer or a bad ``last:N``.
    """
    if isinstance(plan, str):
        if plan == ALL:
            return frozenset(n for n, p in model.named_parameters() if p.requires_grad)
        kind, _, count = plan.partition(":")
        if plan.startswith(("last:", "first:")):
            if not count.isdigit() or not 0 < int(count) <= len(layer_order):
                raise EdgetrainError(
                    f"plan '{plan}': N must be 1..{len(layer_order)} (the parameter layers)"
                )
            n = int(count)
            plan = layer_order[-n:] if kind == "last" else layer_order[:n]
        else:
            plan = [p for p in plan.split(",") if p]
    names = list(plan)
    if not names:
        raise EdgetrainError("an empty plan trains nothing; name at least one layer")
    chosen: set[str] = set()
    if ROOT in names:
        chosen.update(n for n, _ in model.named_parameters(recurse=False))
    others = [n for n in names if n != ROOT]
    if others:
        for prefix, module in select_modules(model, others):
            chosen.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters())
    if not chosen:
        raise EdgetrainError(
            f"plan {','.join(names)} names no module with parameters, so it trains nothing; "
            f"layers: {', '.join(layer_order)}"
        )
    return frozenset(chosen)


def plan_label(plan: Plan) -> str:
    """A short text for tables: ``all``, ``last:2`` or ``conv6,fc``."""
    return plan if isinstance(plan, str) else ",".join(plan)
