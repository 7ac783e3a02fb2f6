"""Adaptive batch size: as the network shrinks, grow the batch at constant memory.

- :func:`max_batch_estimate` (any device): the largest batch whose training step fits a
  byte budget under the cost model (the step's peak as the allocator would see it, found
  by doubling then bisecting the batch: the peak is not affine in the batch, since
  weights and gradients dominate small batches and activations large ones).
- :func:`max_batch_search` (CUDA): a guarded search that runs real steps, doubling then
  bisecting, catching out-of-memory; it never trusts "free memory" figures.
- :class:`BatchPredictor`: ``1/b_max`` is close to linear in the parameter count ``P``;
  fit ``1/b = a*P + c`` on probed points, read the next batch off it.
- :class:`AdaptiveBatch`: a Trainer callback that, whenever the parameter count changed
  (PruneTrain reconfigured), sets the next epoch's batch size and scales the learning
  rate with it (``linear``, ``sqrt``, or ``none`` when a LARS optimizer adapts it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgetrain.cost import ALL, analyze
from edgetrain.engine import CALLBACKS, Callback
from edgetrain.engine.optim import scheduler_interval
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = [
    "AdaptiveBatch",
    "BatchPredictor",
    "LR_SCALING",
    "max_batch_estimate",
    "max_batch_search",
    "step_memory_bytes",
]

LR_SCALING = ("linear", "sqrt", "none")


def step_memory_bytes(
    model: nn.Module, input_shape: Sequence[int], batch_size: int, optimizer: str = "momentum"
) -> int:
    """Peak bytes of one training step of the whole model at ``batch_size`` (cost model:
    every tensor from creation to last use, weights, gradients and optimizer state
    included)."""
    report = analyze(model, input_shape, [ALL], optimizer=optimizer, batch_size=batch_size)
    return report.steps()[0].memory_reuse_bytes


def max_batch_estimate(
    model: nn.Module,
    input_shape: Sequence[int],
    budget_bytes: int,
    optimizer: str = "momentum",
    limit: int = 65536,
) -> int:
    """The largest batch whose training step fits ``budget_bytes`` under the cost model.

    Example:
        >>> from edgetrain.models import create
        >>> net = create("small_cnn")
        >>> b = max_batch_estimate(net, (3, 32, 32), step_memory_bytes(net, (3, 32, 32), 64))
        >>> b >= 64
        True
    """
    one = step_memory_bytes(model, input_shape, 1, optimizer)
    if budget_bytes < one:
        raise ConfigError(
            f"memory budget {budget_bytes:,} B is below one sample's training step "
            f"({one:,} B); raise the budget"
        )

    def fits(batch: int) -> bool:
        return step_memory_bytes(model, input_shape, batch, optimizer) <= budget_bytes

    # The peak is not linear in the batch (weights and gradients dominate small
    # batches), so search: 2 log2(batch) simulated steps.
    return _largest_fitting(fits, 1, limit)


def _largest_fitting(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest batch up to ``limit`` that ``fits`` (0 when none): double from
    ``start`` until one does not fit, then bisect."""
    low, high = 0, start
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def max_batch_search(
    model: nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str = "cuda",
    start: int = 32,
    limit: int = 8192,
    num_classes: int | None = None,
) -> int:
    """The largest batch that trains without running out of memory, found by running real
    forward/backward steps on ``device`` (doubling, then bisecting), on a copy of the
    model so the original is untouched. Out-of-memory is caught, never predicted."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ConfigError(
            f"a guarded batch search needs a CUDA device, got '{device}'; "
            "use max_batch_estimate (the cost model) on CPU"
        )
    probe = copy.deepcopy(model).to(device).train()

    def fits(b: int) -> bool:
        try:
            x = torch.randn(b, *input_shape, device=device)
            out = probe(x)
            target = torch.zeros(b, dtype=torch.long, device=device)
            loss = (
                nn.functional.cross_entropy(out, target)
                if num_classes is not None or out.dim() == 2
                else out.float().mean()
            )
            loss.backward()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            probe.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    batch = _largest_fitting(fits, start, limit)
    if batch == 0:
        raise ConfigError(f"not even a batch of 1 fits on {device}; use a smaller model")
    return batch


@dataclass
class BatchPredictor:
    """Least-squares fit of ``1/b_max = a*P + c`` (``P``: parameter count).

    Example:
        >>> p = BatchPredictor()
        >>> p.add(1000, 100); p.add(500, 200)
        >>> p.predict(250)
        400
    """

    points: list[tuple[int, int]] = field(default_factory=list)

    def add(self, params: int, batch: int) -> None:
        self.points.append((int(params), int(batch)))

    @property
    def ready(self) -> bool:
        return len({p for p, _ in self.points}) >= 2

    def coefficients(self) -> tuple[float, float]:
        """``(a, c)`` of the fit (needs two distinct parameter counts)."""
        if not self.ready:
            raise ConfigError("BatchPredictor needs probes at two different parameter counts")
        xs = [float(p) for p, _ in self.points]
        ys = [1.0 / b for _, b in self.points]
        n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        return a, my - a * mx if n else 0.0

    def predict(self, params: int) -> int:
        a, c = self.coefficients()
        inv = a * params + c
        return max(1, math.floor(1.0 / inv + 1e-9)) if inv > 0 else 1 << 30


class AdaptiveBatch(Callback):
    """Grow the batch as the model shrinks, keeping the training step's memory.

    Put it after :class:`~edgetrain.prune.PruneTrain` in the callback list. At the
    start of every epoch whose model differs in size from the last one it resizes:

    - the budget is ``budget_mb`` or, by default, the memory of the first epoch's step;
    - on CUDA with ``search=True`` the first two sizes are probed by a guarded search and
      later ones read off the :class:`BatchPredictor`; otherwise the cost model gives
      the batch directly (and feeds the predictor, whose fit is logged);
    - the batch is rounded down to a multiple of ``multiple_of`` and capped at
      ``max_batch``; the learning rate follows it (``lr_scaling``).

    Args:
        budget_mb: training-step memory budget in MiB (default: the first epoch's).
        max_batch: never go beyond this batch.
        multiple_of: round batches down to a multiple of this.
        lr_scaling: ``linear`` (lr * b_new/b_old), ``sqrt``, or ``none`` (e.g. with LARS).
        search: use the guarded search on CUDA instead of the cost model.
    """

    def __init__(
        self,
        budget_mb: float | None = None,
        max_batch: int = 1024,
        multiple_of: int = 8,
        lr_scaling: str = "linear",
        search: bool = True,
    ) -> None:
        if lr_scaling not in LR_SCALING:
            raise ConfigError(
                f"lr_scaling must be one of {', '.join(LR_SCALING)}, got '{lr_scaling}'"
            )
        if max_batch < 1 or multiple_of < 1:
            raise ConfigError("max_batch and multiple_of must be >= 1")
        self.budget_mb, self.max_batch, self.multiple_of = budget_mb, max_batch, multiple_of
        self.lr_scaling, self.search = lr_scaling, search
        self.predictor = BatchPredictor()
        self._params: int | None = None
        self._budget: int | None = None
        self._batch: int | None = None  # the batch reached (restored on resume)

    def _optimizer_kind(self, trainer: Trainer) -> str:
        opt = trainer.optimizer
        if isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
            return "adam"
        return "momentum" if opt.defaults.get("momentum", 0) else "sgd"

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        if trainer.scheduler is not None and scheduler_interval(trainer.scheduler) == "step":
            raise ConfigError(
                "adaptive batch size changes the steps per epoch, which a per-step LR "
                "schedule (onecycle) cannot follow; use a per-epoch scheduler"
            )
        self._shape = tuple(getattr(model, "input_shape", ()) or ())
        if not self._shape:
            raise ConfigError(
                f"AdaptiveBatch needs the model's input shape; give {type(model).__name__} "
                "an input_shape attribute (zoo models have one)"
            )
        if self._budget is None:
            self._budget = (
                int(self.budget_mb * 2**20)
                if self.budget_mb is not None
                else step_memory_bytes(
                    model, self._shape, trainer.batch_size, self._optimizer_kind(trainer)
                )
            )
        if self._params is None:
            self._params = sum(p.numel() for p in model.parameters())
        if self._batch is not None and self._batch != trainer.batch_size:
            trainer.set_batch_size(self._batch)  # a resumed run goes on with its batch
        self._batch = trainer.batch_size

    def _batch_for(self, trainer: Trainer, model: nn.Module, params: int) -> int:
        on_cuda = trainer.device.type == "cuda" and self.search
        if on_cuda and self.predictor.ready:
            batch = self.predictor.predict(params)
        elif on_cuda:
            batch = max_batch_search(model, self._shape, trainer.device, limit=self.max_batch)
            self.predictor.add(params, batch)
        else:
            batch = max_batch_estimate(
                model, self._shape, self._budget or 0, self._optimizer_kind(trainer)
            )
            self.predictor.add(params, batch)
        batch = min(batch, self.max_batch)
        if batch >= self.multiple_of:
            batch -= batch % self.multiple_of
        return batch

    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        params = sum(p.numel() for p in model.parameters())
        if params == self._params:
            return
        self._params = params
        old = trainer.batch_size
        new = max(old, self._batch_for(trainer, model, params))  # never shrink the batch
        if new == old:
            return
        trainer.set_batch_size(new)
        self._batch = new
        factor = {"linear": new / old, "sqrt": math.sqrt(new / old), "none": 1.0}[self.lr_scaling]
        if factor != 1.0:
            _scale_lr(trainer, factor)
        values: dict[str, Any] = {"batch_size_from": old}
        if self.predictor.ready:
            a, c = self.predictor.coefficients()
            values.update(batch_fit_a=a, batch_fit_c=c)
        trainer.log(**values)

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": self._params,
            "budget": self._budget,
            "batch_size": self._batch,
            "points": [list(p) for p in self.predictor.points],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._params, self._budget = state.get("params"), state.get("budget")
        self._batch = state.get("batch_size")
        self.predictor = BatchPredictor([tuple(p) for p in state.get("points", [])])


def _scale_lr(trainer: Trainer, factor: float) -> None:
    """Scale every group's learning rate, and what the scheduler computes it from."""
    for group in trainer.optimizer.param_groups:
        group["lr"] *= factor
        for key in ("initial_lr", "max_lr", "min_lr"):
            if isinstance(group.get(key), int | float):
                group[key] *= factor
    scheduler = trainer.scheduler
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]


@CALLBACKS.register("adaptive-batch")
def adaptive_batch(
    budget_mb: float | None = None,
    max_batch: int = 1024,
    multiple_of: int = 8,
    lr_scaling: str = "linear",
    search: bool = True,
) -> AdaptiveBatch:
    """Grow the batch as PruneTrain shrinks the model, at constant step memory."""
    return AdaptiveBatch(budget_mb, max_batch, multiple_of, lr_scaling, search)
