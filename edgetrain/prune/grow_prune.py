"""Grow and prune in one run: PruneTrain phases alternating with Net2Net widening until
the architecture meets an inference-MAC target.

Every ``interval`` epochs PruneTrain removes the channels group lasso has zeroed. What the
penalty leaves says where capacity is missing: a layer in which at least ``saturated``
of the channels are in full use (norm at least half its group's mean) uses all it has.
When the pruned network is below the target (by more than ``slack``), those layers are
widened with Net2Net (function-preserving, a little noise to break the copies'
symmetry), most saturated first, each by ``growth`` (at least one
channel) while the network stays within the target; training goes on from the same
function with the optimizer's state kept for every tensor whose shape did not change.
While the network is above the target, each reconfiguration also removes the channels
group lasso has weakened most (channel norm relative to its group's mean, below a
threshold found by bisection) until the MACs fall by at most ``max_step`` of their
value or to ``overshoot`` below the target, whichever is less: the penalty ranks the
channels, the step guarantees the target is reached in time, and the overshoot leaves
room for growth where it is needed. Growth stops after ``cycles`` widenings;
reconfigurations stop after ``stop_epoch`` (then the architecture is fixed and the rest
of the run fine-tunes it).

Every epoch's metrics carry the MACs of the architecture the checkpoint holds
(``grow_prune_macs``) and, when it meets the target, ``val_top1_within_target``; the
best such epoch is also saved as ``checkpoints/best_within_target.pt`` (``best.pt`` is
the best accuracy of any architecture).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgetrain.cost import analyze
from edgetrain.engine import CALLBACKS
from edgetrain.engine.checkpoint import atomic_save
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.prune.callback import PruneTrain
from edgetrain.prune.graph import example_input as default_input
from edgetrain.prune.reconfigure import ReconfigureResult

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = ["BEST_WITHIN_TARGET", "GrowPrune"]

BEST_WITHIN_TARGET = "best_within_target.pt"
# a channel whose norm is at least this share of its group's mean is in full use
STRONG = 0.5


@CALLBACKS.register("grow-prune")
class GrowPrune(PruneTrain):
    """PruneTrain with Net2Net growth towards an inference-MAC target.

    Args:
        target_macs: inference MACs per sample the final architecture must not exceed.
        ratio, interval, threshold, stop_epoch, penalty: PruneTrain's.
        growth: widening factor of a saturated layer per cycle.
        saturated: share of a layer's channels in full use (norm at least half its
            group's mean, after the penalty's pull) for it to count as lacking capacity.
        cycles: most widening steps in the run.
        slack: grow only when the network is below ``(1 - slack) * target_macs``.
        max_step: most share of the MACs one reconfiguration may remove by channel norm
            while the network is above the target.
        overshoot: such a step goes down to ``(1 - overshoot) * target_macs``, leaving
            room to grow the layers that turn out to need it.
        noise: Net2Net noise on the copied kernels (relative to each kernel's spread).
    """

    def __init__(
        self,
        target_macs: float,
        ratio: float = 0.2,
        interval: int = 5,
        threshold: float = 1e-4,
        stop_epoch: int | None = None,
        penalty: str = "loss",
        growth: float = 1.5,
        saturated: float = 0.9,
        cycles: int = 3,
        slack: float = 0.05,
        max_step: float = 0.3,
        overshoot: float = 0.1,
        noise: float = 0.01,
    ) -> None:
        super().__init__(ratio, interval, threshold, stop_epoch, penalty)
        checks = {
            "target_macs": (target_macs, target_macs > 0, "> 0"),
            "growth": (growth, growth > 1, "> 1"),
            "saturated": (saturated, 0 < saturated <= 1, "in (0, 1]"),
            "cycles": (cycles, cycles >= 0, ">= 0"),
            "slack": (slack, 0 <= slack < 1, "in [0, 1)"),
            "max_step": (max_step, 0 < max_step < 1, "in (0, 1)"),
            "overshoot": (overshoot, 0 <= overshoot < 1, "in [0, 1)"),
            "noise": (noise, noise >= 0, ">= 0"),
        }
        for name, (value, ok, bound) in checks.items():
            if not ok:
                raise ConfigError(f"grow-prune: {name} must be {bound}, got {value}")
        self.target_macs = float(target_macs)
        self.growth, self.saturated, self.cycles = growth, saturated, cycles
        self.slack, self.max_step, self.noise = slack, max_step, noise
        self.overshoot = overshoot
        self.grown = 0
        self.best_within: float | None = None
        self._macs = 0

    @property
    def state_key(self) -> str:
        return "GrowPrune"

    def _inference_macs(self, model: nn.Module) -> int:
        return int(analyze(model, self._input_shape or (), memory="layerwise").total().forward_macs)

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        super().on_fit_start(trainer, model)
        self._macs = self._inference_macs(model)

    # ------------------------------------------------------------- reconfigure
    def reconfigure(self, trainer: Trainer, model: nn.Module) -> ReconfigureResult:
        result = super().reconfigure(trainer, model)
        macs = self._inference_macs(model)
        grown: dict[str, int] = {}
        removed: dict[str, int] = {}
        if macs > self.target_macs:
            goal = max(self.target_macs * (1 - self.overshoot), macs * (1 - self.max_step))
            removed = self._shrink(trainer, model, goal)
            macs = self._inference_macs(model)
        elif self.grown < self.cycles and macs < (1 - self.slack) * self.target_macs:
            grown = self._grow(trainer, model)
            if grown:
                self.grown += 1
                macs = self._inference_macs(model)
        self._macs = macs
        self.history[-1].update(grown=grown, shrunk=removed, macs_after_growth=macs)
        trainer.log(
            grown_layers=float(len(grown)),
            grow_cycles=float(self.grown),
            norm_removed_channels=float(sum(removed.values())),
        )
        return result

    def _shrink(self, trainer: Trainer, model: nn.Module, goal: float) -> dict[str, int]:
        """Remove the weakest channels (norm relative to its group's mean below a
        bisected threshold) until the model has at most ``goal`` MACs."""
        from edgetrain.prune.graph import channel_groups
        from edgetrain.prune.reconfigure import remove_channels

        example = default_input(model)

        def plan(net: nn.Module, tau: float) -> dict[str, list[int]]:
            out = {}
            for group in channel_groups(net, example):
                if group.attention or group.mixing_norms():
                    continue  # heads and channel-mixing norms: not thinned channel by channel
                norms = group.channel_norms()
                relative = norms / norms.mean().clamp_min(1e-12)
                weak = [int(i) for i in torch.nonzero(relative < tau).flatten()]
                if len(weak) >= group.size:  # keep the strongest channel
                    weak.remove(int(norms.argmax()))
                if weak:
                    out[group.root] = weak
            return out

        def macs_at(tau: float) -> int:
            trial = _copy(model)
            removals = plan(trial, tau)
            if removals:
                remove_channels(trial, removals, example_input=example)
            return self._inference_macs(trial)

        low, high = 0.0, 2.0
        if macs_at(high) <= goal:
            for _ in range(12):
                mid = (low + high) / 2
                if macs_at(mid) <= goal:
                    high = mid
                else:
                    low = mid
        removals = plan(model, high)
        if not removals:
            return {}
        remove_channels(model, removals, trainer.optimizer, example_input=example)
        trainer.replace_model(model)
        self._refresh(model)
        self._mark_architecture(trainer)
        return {name: len(idx) for name, idx in removals.items()}

    def _grow(self, trainer: Trainer, model: nn.Module) -> dict[str, int]:
        """Widen the saturated layers while the network stays within the target."""
        from edgetrain.prune.graph import channel_groups
        from edgetrain.prune.grow import widen

        example = default_input(model)
        strong: dict[str, float] = {}  # per channel group: share of channels in full use
        for group in channel_groups(model, example):
            if group.attention or group.mixing_norms():
                continue
            norms = group.channel_norms()
            relative = norms / norms.mean().clamp_min(1e-12)
            strong[group.root] = float((relative >= STRONG).double().mean())
        candidates = sorted(
            (n for n, share in strong.items() if share >= self.saturated),
            key=lambda n: (-strong[n], n),
        )
        names_before = _parameter_names(model)
        generator = torch.Generator().manual_seed(trainer.seed + 7919 * (self.grown + 1))
        grown: dict[str, int] = {}
        for name in candidates:
            width = int(model.get_submodule(name).weight.shape[0])
            new = max(width + 1, math.ceil(width * self.growth))
            trial = _copy(model)
            try:
                widen(trial, name, new, example_input=example)
            except EdgetrainError:
                continue  # the output layer, or a layout widening cannot map
            if self._inference_macs(trial) > self.target_macs:
                continue
            widen(model, name, new, noise=self.noise, generator=generator, example_input=example)
            grown[name] = new
        if grown:
            _rebind_optimizer(trainer.optimizer, names_before, model)
            trainer.replace_model(model)
            self._refresh(model)
            self._mark_architecture(trainer)
        return grown

    # ---------------------------------------------------------------- epochs
    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        super().on_epoch_end(trainer, model)  # may reconfigure and grow
        top1 = trainer.state.last_record.get("val_top1")
        within = self._macs <= self.target_macs
        values: dict[str, Any] = {
            "grow_prune_macs": float(self._macs),
            "meets_target": float(within),
        }
        if within and top1 is not None:
            values["val_top1_within_target"] = top1
        trainer.log(**values)
        if within and top1 is not None and (self.best_within is None or top1 > self.best_within):
            self.best_within = float(top1)
            if trainer.run_dir is not None and trainer.is_main:
                atomic_save(
                    trainer.checkpoint_state(), trainer.run_dir.checkpoints / BEST_WITHIN_TARGET
                )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "grown": self.grown, "best_within": self.best_within}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.grown = int(state.get("grown", 0))
        self.best_within = state.get("best_within")


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _parameter_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _rebind_optimizer(
    optimizer: torch.optim.Optimizer, names_before: dict[int, str], model: nn.Module
) -> None:
    """Point the optimizer's groups at the model's parameters after widening (modules are
    rebuilt under their old names), keeping the state of every parameter whose shape did
    not change and dropping the rest (a widened tensor starts without momentum)."""
    now = dict(model.named_parameters())
    seen: set[int] = set()
    for group in optimizer.param_groups:
        params = []
        for old in group["params"]:
            name = names_before.get(id(old))
            new = now.get(name) if name is not None else None
            if new is None:
                raise EdgetrainError(
                    "grow-prune: a parameter of the optimizer is no longer in the model "
                    "after widening; build the optimizer from the model's parameters"
                )
            state = optimizer.state.pop(old, None)
            if state is not None and new.shape == old.shape:
                optimizer.state[new] = state
            params.append(new)
            seen.add(id(new))
        group["params"] = params
    missing = [n for n, p in now.items() if p.requires_grad and id(p) not in seen]
    if missing:
        optimizer.param_groups[0]["params"].extend(now[n] for n in missing)
