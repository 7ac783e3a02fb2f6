"""The layer-scheduling callback: applies a :class:`Schedule` step by step.

Before each forward it sets ``requires_grad`` of every scheduled layer for the step, so
autograd neither stores activations nor computes gradients below the lowest active layer;
the Trainer clears gradients with ``set_to_none=True``, so a skipped layer never applies
a stale gradient. Per-layer rates (``pllr``, ``upscaled``, rate matrices) scale the
learning rate of the layer's parameter group for the step only, so any optimizer and LR
scheduler keep working; ``rdo`` masks weight-gradient elements at random.

Dataset shifting: the cycle is shifted by one step per epoch against the data order, so
the sample seen at a given position meets every column of the cycle within T epochs
(and the Trainer reshuffles the data every epoch on top of that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgetrain.engine import CALLBACKS, Callback
from edgetrain.errors import EdgetrainError
from edgetrain.finetune.costing import optimise_placement, schedule_layers
from edgetrain.finetune.fold import fold_batchnorm
from edgetrain.finetune.schedule import Schedule

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = ["LayerSchedule"]


class LayerSchedule(Callback):
    """Train only the scheduled layers, step by step.

    Args:
        schedule: a :class:`Schedule` or its notation (``"4421"``, ``"4422_m"`` ...).
        fold_bn: fold batch-norms into their conv/linear first (as on-device trainers do).
        optimise_m: for ``_m`` schedules, choose the placement with the lowest peak memory
            under the cost model (needs the model's input shape).

    Example:
        >>> cb = LayerSchedule("4421")
        >>> cb.schedule.bits()
        ['1111', '1111', '1010', '1000']
    """

    def __init__(
        self,
        schedule: Schedule | str | Sequence[str | Sequence[float]],
        fold_bn: bool = True,
        optimise_m: bool = True,
    ) -> None:
        self.schedule = Schedule.coerce(schedule)
        self.fold_bn, self.optimise_m = fold_bn, optimise_m
        self.layers: list[str] = []
        self.params: list[list[nn.Parameter]] = []
        self.groups: list[dict[str, Any] | None] = []
        self._epoch = self._index = 0
        self._saved_lrs: list[tuple[dict[str, Any], float, float]] = []

    @property
    def state_key(self) -> str:
        return f"LayerSchedule[{self.schedule}]"

    # -------------------------------------------------------------- set-up
    def configure_model(self, trainer: Trainer, model: nn.Module) -> None:
        shape = getattr(model, "input_shape", None) or (trainer.architecture or {}).get(
            "input_shape"
        )
        if self.fold_bn and shape:
            fold_batchnorm(model, tuple(shape))
        try:
            self.layers = schedule_layers(model, self.schedule)
        except ValueError as exc:
            raise EdgetrainError(str(exc)) from None
        if self.optimise_m and shape and self.schedule.memory_optimised:
            self.schedule = optimise_placement(self.schedule, model, tuple(shape))
        modules = dict(model.named_modules())
        self.params = [list(modules[n].parameters()) for n in self.layers]
        trained = {
            id(p)
            for row, ps in zip(self.schedule.pattern, self.params, strict=True)
            if any(row)
            for p in ps
        }
        for p in model.parameters():
            if id(p) not in trained:
                p.requires_grad_(False)

    @property
    def needs_rates(self) -> bool:
        """Whether some layer trains at a rate other than the optimizer's."""
        return any(r not in (0.0, 1.0) for r in self.schedule.rates)

    def param_groups(self, trainer: Trainer, model: nn.Module) -> list[dict[str, Any]] | None:
        """One group per scheduled layer when the schedule sets per-layer rates, so each
        can get its own; otherwise none (the optimizer's one group): at batch 1 every
        extra group costs optimizer time per step that skipping layers cannot save."""
        if not self.needs_rates:
            return None
        groups = [
            {"params": ps, "layer": n} for n, ps in zip(self.layers, self.params, strict=True) if ps
        ]
        seen = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in model.parameters() if id(p) not in seen]
        return groups + ([{"params": rest, "layer": "(frozen)"}] if rest else [])

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        by_layer = {g.get("layer"): g for g in trainer.optimizer.param_groups}
        self.groups = [by_layer.get(n) for n in self.layers]
        if self.needs_rates and any(
            g is None
            for g, r in zip(self.groups, self.schedule.rates, strict=True)
            if r not in (0.0, 1.0)
        ):
            raise EdgetrainError(
                f"schedule '{self.schedule}' sets per-layer rates but the optimizer was built "
                "without per-layer groups; let the Trainer build it (pass a factory, not an "
                "optimizer object)"
            )

    def on_fit_end(self, trainer: Trainer, model: nn.Module) -> None:
        # Leave every scheduled layer trainable (not the last step's subset), so summaries
        # and later runs see the layers this schedule trains.
        for row, params in zip(self.schedule.pattern, self.params, strict=True):
            for p in params:
                p.requires_grad_(any(row))

    # ----------------------------------------------------------- per step
    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        self._epoch, self._index = trainer.state.epoch, 0

    @property
    def column(self) -> int:
        """The schedule column of the current step (shifted by one step per epoch)."""
        return (self._index + self._epoch) % self.schedule.cycle_length

    def before_forward(self, trainer: Trainer, model: nn.Module, inputs: torch.Tensor) -> None:
        column = self.column
        for row, params in zip(self.schedule.pattern, self.params, strict=True):
            on = bool(row[column])
            for p in params:
                p.requires_grad_(on)

    def before_optimizer_step(
        self, trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        column = self.column
        self._saved_lrs = []
        for i, (row, rate, keep) in enumerate(
            zip(self.schedule.pattern, self.schedule.rates, self.schedule.keep, strict=True)
        ):
            if not row[column]:
                continue
            group = self.groups[i]
            if group is not None and rate != 1.0:
                scaled = group["lr"] * rate
                self._saved_lrs.append((group, group["lr"], scaled))
                group["lr"] = scaled
            if keep < 1.0:
                for p in self.params[i]:
                    if p.grad is not None:
                        p.grad.mul_(torch.bernoulli(torch.full_like(p.grad, keep)))

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        for group, lr, scaled in self._saved_lrs:
            # a per-step LR scheduler that set a new rate after the step keeps its value
            if group["lr"] == scaled:
                group["lr"] = lr
        self._saved_lrs = []
        self._index += 1


@CALLBACKS.register("layer-schedule")
def layer_schedule(
    schedule: str | list[str] | list[list[float]], fold_bn: bool = True, optimise_m: bool = True
) -> LayerSchedule:
    """Layer-scheduled fine-tuning (BPLS, pllr, upscaled, rdo) from schedule notation or an
    explicit matrix (``1111/1010/0101``, or a list of rows)."""
    try:
        return LayerSchedule(schedule, fold_bn, optimise_m)
    except ValueError as exc:
        raise EdgetrainError(str(exc)) from None
