"""MorphNet: a resource-aware sparsity regulariser and the width-multiplier search.

The regulariser on channel strengths (batch-norm gammas)::

    G = sum_j C_j * ( alive_in_j * sum_c |gamma_c,j| + alive_out_j * sum_k |gamma_k,j-1| )

for every conv/linear layer ``j``: ``gamma_.,j`` are the strengths of its output
channels, ``gamma_.,j-1`` those of its input channels, ``alive`` counts the channels with
strength above a threshold (constants for the gradient), and ``C_j = kh*kw`` (model
size) or ``kh*kw*o_size`` (FLOPs, ``o_size`` the output positions). Loss = task +
lambda*G. Channels are coupled through the dependency graph; a group whose channels
carry exactly one batch-norm uses ``|gamma|``, any other group (no batch-norm, or several
tied at a residual add, where gamma coupling breaks) uses the group-lasso norm of the
channel's weights instead.

The loop (:func:`morphnet_iterate`): train with G; read the widths from the channels
still alive; find the largest width multiplier ``w`` with ``cost(w * widths) <= budget``
(bisection: the cost is not linear in ``w``); build that network; repeat.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgetrain._modules import eval_mode
from edgetrain.engine import CALLBACKS, Callback
from edgetrain.errors import ConfigError
from edgetrain.models import WEIGHT_LAYER_TYPES
from edgetrain.prune.graph import ChannelGroup, build_graph, channel_groups
from edgetrain.prune.graph import example_input as default_input
from edgetrain.prune.reconfigure import remove_channels

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = [
    "COSTS",
    "ChannelWidths",
    "MorphNet",
    "MorphNetStructure",
    "morphnet_iterate",
    "resize_groups",
    "width_multiplier",
]

COSTS = ("size", "flops")
EPS = 1e-8


@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    in_group: int | None  # index into structure.groups, None: fixed (data / no group)
    out_group: int | None  # None: fixed (the model's outputs)
    in_fixed: int
    out_fixed: int
    kernel: int  # kh*kw (1 for linear)
    positions: int  # output positions per sample (1 for linear)


@dataclass
class MorphNetStructure:
    """The coupled channel groups of a model and, per layer, which group feeds it and
    which it feeds, with its kernel area and output positions."""

    model: nn.Module
    groups: list[ChannelGroup]
    layers: list[_Layer] = field(default_factory=list)

    @classmethod
    def of(cls, model: nn.Module, example: torch.Tensor | None = None) -> MorphNetStructure:
        example = default_input(model, example)
        graph = build_graph(model, example)
        groups = channel_groups(model, example, graph=graph)
        positions: dict[str, int] = {}
        handles = []
        for name, module in model.named_modules():
            if isinstance(module, WEIGHT_LAYER_TYPES):
                handles.append(
                    module.register_forward_hook(
                        lambda _m, _i, out, n=name: positions.__setitem__(
                            n, int(out[0, 0].numel()) if out.dim() > 2 else 1
                        )
                    )
                )
        try:
            with eval_mode(model), torch.no_grad():
                model(example[:1])
        finally:
            for h in handles:
                h.remove()
        out_of = {m.name: gi for gi, g in enumerate(groups) for m in g.members if m.role == "out"}
        in_of = {m.name: gi for gi, g in enumerate(groups) for m in g.members if m.role == "in"}
        layers = []
        for name, module in model.named_modules():
            if not isinstance(module, WEIGHT_LAYER_TYPES):
                continue
            w = module.weight
            layers.append(
                _Layer(
                    name=name,
                    module=module,
                    in_group=in_of.get(name),
                    out_group=out_of.get(name),
                    in_fixed=int(w.shape[1]) * getattr(module, "groups", 1),
                    out_fixed=int(w.shape[0]),
                    kernel=int(w[0, 0].numel()),
                    positions=positions.get(name, 1),
                )
            )
        return cls(model=model, groups=groups, layers=layers)

    # ------------------------------------------------------------ strengths
    def strengths(self, group: ChannelGroup) -> torch.Tensor:
        """Per channel of ``group``: ``|gamma|`` of its single batch-norm, else the L2 norm
        of the channel's conv/linear weights (differentiable)."""
        norms = [
            m
            for m in group.members
            if isinstance(m.module, nn.modules.batchnorm._BatchNorm) and m.module.affine
        ]
        if len(norms) == 1:
            bn = norms[0]
            order = torch.tensor(bn.root_idxs).argsort()
            return bn.module.weight[torch.tensor(bn.idxs)[order]].abs()
        sq = None
        for m in group.weight_members():
            w = m.module.weight
            dim = 0 if m.role == "out" else 1
            per_idx = w.pow(2).transpose(0, dim).reshape(w.shape[dim], -1).sum(1)
            idx = torch.tensor(m.idxs, device=w.device)
            roots = torch.tensor(m.root_idxs, device=w.device)
            part = torch.zeros(group.size, device=w.device, dtype=w.dtype).index_add(
                0, roots, per_idx[idx]
            )
            sq = part if sq is None else sq + part
        if sq is None:
            raise ConfigError(f"channel group of '{group.root}' has no weights to measure")
        return torch.sqrt(sq + EPS)

    def alive(self, threshold: float) -> list[int]:
        """Channels per group whose strength exceeds ``threshold`` (at least 1)."""
        with torch.no_grad():
            return [max(1, int((self.strengths(g) > threshold).sum())) for g in self.groups]

    def widths(self) -> list[int]:
        return [g.size for g in self.groups]

    # ----------------------------------------------------------------- cost
    def coefficient(self, layer: _Layer, cost: str) -> int:
        return layer.kernel * (layer.positions if cost == "flops" else 1)

    def cost(self, widths: list[int] | list[float], cost: str = "flops") -> float:
        """Model size (weights) or FLOPs (MACs per sample) of the conv/linear layers with
        the given per-group widths."""
        total = 0.0
        for layer in self.layers:
            c_in = layer.in_fixed if layer.in_group is None else widths[layer.in_group]
            c_out = layer.out_fixed if layer.out_group is None else widths[layer.out_group]
            total += self.coefficient(layer, cost) * c_in * c_out
        return total

    def penalty(self, cost: str = "flops", threshold: float = 1e-2) -> torch.Tensor:
        """The regulariser G (differentiable in the strengths)."""
        strengths = [self.strengths(g) for g in self.groups]
        with torch.no_grad():
            alive = [max(1, int((s > threshold).sum())) for s in strengths]
        total: torch.Tensor | None = None
        for layer in self.layers:
            coef = self.coefficient(layer, cost)
            a_in = layer.in_fixed if layer.in_group is None else alive[layer.in_group]
            a_out = layer.out_fixed if layer.out_group is None else alive[layer.out_group]
            terms = []
            if layer.out_group is not None:
                terms.append(a_in * strengths[layer.out_group].sum())
            if layer.in_group is not None:
                terms.append(a_out * strengths[layer.in_group].sum())
            for t in terms:
                total = coef * t if total is None else total + coef * t
        if total is None:
            raise ConfigError("MorphNet: the model has no channel group to regularise")
        return total


def width_multiplier(
    structure: MorphNetStructure,
    widths: list[int],
    budget: float,
    cost: str = "flops",
    upper: float = 16.0,
    tol: float = 1e-3,
) -> tuple[float, list[int]]:
    """The largest ``w`` with ``cost(ceil(w * widths)) <= budget``, and those widths.

    Bisection on ``w`` (the cost is monotone but not linear in ``w``: products of widths).
    """
    if cost not in COSTS:
        raise ConfigError(f"MorphNet cost must be one of {', '.join(COSTS)}, got '{cost}'")

    def scaled(w: float) -> list[int]:
        return [max(1, math.ceil(w * c - 1e-9)) for c in widths]

    if structure.cost(scaled(tol), cost) > budget:
        raise ConfigError(
            f"budget {budget:,.0f} is below the smallest network of this shape "
            f"({structure.cost(scaled(tol), cost):,.0f}); raise the budget"
        )
    lo, hi = tol, upper
    while structure.cost(scaled(hi), cost) <= budget and hi < 1e4:
        lo, hi = hi, hi * 2
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if structure.cost(scaled(mid), cost) <= budget:
            lo = mid
        else:
            hi = mid
    return lo, scaled(lo)


def resize_groups(
    model: nn.Module,
    targets: list[int],
    example: torch.Tensor | None = None,
    structure: MorphNetStructure | None = None,
) -> nn.Module:
    """Give every channel group of ``model`` its target width, in place: shrink by
    removing the weakest channels, grow with fresh channels (random init). The result is
    a new network to train, not a function-preserving edit."""
    from edgetrain.prune.grow import widen

    structure = structure or MorphNetStructure.of(model, example)
    if len(targets) != len(structure.groups):
        raise ConfigError(
            f"resize_groups: {len(targets)} widths for {len(structure.groups)} channel groups"
        )
    example = default_input(model, example)
    roots = [g.root for g in structure.groups]
    shrink: dict[str, list[int]] = {}
    for group, target in zip(structure.groups, targets, strict=True):
        if target < group.size:
            with torch.no_grad():
                order = structure.strengths(group).argsort()  # weakest first
            shrink[group.root] = sorted(int(i) for i in order[: group.size - target])
    if shrink:
        remove_channels(model, shrink, example_input=example)
    for root, target in zip(roots, targets, strict=True):
        current = int(model.get_submodule(root).weight.shape[0])
        if target > current:
            widen(model, root, target, init="random", example_input=example)
    return model


class MorphNet(Callback):
    """Adds ``lambda * G`` to the loss and logs G, the alive widths and their cost.

    Args:
        strength: lambda.
        cost: ``"flops"`` or ``"size"``.
        threshold: strength above which a channel counts as alive.
    """

    def __init__(self, strength: float = 1e-9, cost: str = "flops", threshold: float = 1e-2):
        if cost not in COSTS:
            raise ConfigError(f"MorphNet cost must be one of {', '.join(COSTS)}, got '{cost}'")
        if strength <= 0:
            raise ConfigError(f"MorphNet strength must be > 0, got {strength}")
        self.strength, self.cost, self.threshold = strength, cost, threshold
        self.structure: MorphNetStructure | None = None
        self._sum, self._steps = 0.0, 0

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        self.structure = MorphNetStructure.of(model)

    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        self._sum, self._steps = 0.0, 0

    def on_loss(self, trainer: Trainer, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        assert self.structure is not None
        g = self.structure.penalty(self.cost, self.threshold)
        self._sum += float(g.detach())
        self._steps += 1
        return loss + self.strength * g

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        assert self.structure is not None
        alive = self.structure.alive(self.threshold)
        trainer.log(
            morphnet_penalty=self._sum / max(self._steps, 1),
            morphnet_alive=alive,
            morphnet_cost=self.structure.cost(alive, self.cost),
            morphnet_full_cost=self.structure.cost(self.structure.widths(), self.cost),
        )


@CALLBACKS.register("morphnet")
def morphnet(strength: float = 1e-9, cost: str = "flops", threshold: float = 1e-2) -> MorphNet:
    """MorphNet's resource-aware regulariser on channel strengths (batch-norm gammas)."""
    return MorphNet(strength, cost, threshold)


class ChannelWidths(Callback):
    """Give every channel group of the model a width before training (a MorphNet
    proposal: :func:`resize_groups`, fresh channels where it grows). Checkpoints record
    the reshaped architecture, so the run resumes and reloads in it.

    Args:
        widths: one width per channel group, in :class:`MorphNetStructure` order.
    """

    def __init__(self, widths: list[int]) -> None:
        if not widths or any(int(w) < 1 for w in widths):
            raise ConfigError(f"channel widths must be >= 1, got {widths}")
        self.widths = [int(w) for w in widths]

    def configure_model(self, trainer: Trainer, model: nn.Module) -> None:
        resize_groups(model, self.widths)
        arch = dict(trainer.architecture or {})
        arch["pruned"] = True  # reshaped: reload from the checkpoint's tensor shapes
        arch.setdefault("bypassed", [])
        trainer.architecture = arch

    def on_load_checkpoint(self, trainer: Trainer, model: nn.Module, checkpoint: dict) -> None:
        from edgetrain.models.surgery import restore_architecture

        restore_architecture(model, checkpoint["model"], ())


@CALLBACKS.register("channel-widths")
def channel_widths(widths: list[int]) -> ChannelWidths:
    """Resize every channel group to the given widths before training (MorphNet's proposal)."""
    return ChannelWidths(widths)


@dataclass
class MorphNetRound:
    """One round of the loop: the widths trained, those found alive, the expanded ones."""

    widths: list[int]
    alive: list[int]
    multiplier: float
    next_widths: list[int]
    cost: float
    result: Any = None


def morphnet_iterate(
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module, MorphNet], Any],
    budget: float,
    rounds: int = 2,
    strength: float = 1e-9,
    cost: str = "flops",
    threshold: float = 1e-2,
) -> list[MorphNetRound]:
    """The MorphNet loop: train with G, shrink to the alive widths, expand to the budget.

    Args:
        build: makes the seed network (fresh weights).
        train: trains a model with the given MorphNet callback (e.g. a Trainer's fit);
            its return value is kept in each round's ``result``.
        budget: the cost budget (MACs per sample for ``flops``, weights for ``size``).
        rounds: how many shrink/expand rounds.

    Returns:
        One :class:`MorphNetRound` per round; the last ``next_widths`` is the proposal.
    """
    history: list[MorphNetRound] = []
    widths: list[int] | None = None
    for _ in range(rounds):
        model = build()
        structure = MorphNetStructure.of(model)
        if widths is not None:
            resize_groups(model, widths, structure=structure)
            structure = MorphNetStructure.of(model)
        callback = MorphNet(strength, cost, threshold)
        result = train(model, callback)
        structure = MorphNetStructure.of(model)
        alive = structure.alive(threshold)
        multiplier, expanded = width_multiplier(structure, alive, budget, cost)
        history.append(
            MorphNetRound(
                widths=structure.widths(),
                alive=alive,
                multiplier=multiplier,
                next_widths=expanded,
                cost=structure.cost(expanded, cost),
                result=result,
            )
        )
        widths = expanded
    return history
