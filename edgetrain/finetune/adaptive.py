"""Adaptive layer schedules: a schedule that changes during training from what each layer
is measured to still learn, within an operations or peak-memory budget.

Every ``every`` epochs the callback measures a learning signal per scheduled layer and
re-allocates the cycle's updates: layers that still change get more updates per cycle,
layers that have settled fewer, so that the cycle's average MACs per step (relative to
updating every layer every step) and its peak step memory stay within the budgets.

Signals (per layer, smoothed over decisions with an exponential average):

- ``weight_change`` (default, no per-step cost): the relative change of the layer's
  weights over the epoch, ``||W_end - W_start|| / ||W_start||``, divided by the updates
  the layer got, so a layer updated less often is not judged settled for that reason.
- ``grad_norm``: the mean relative gradient norm ``||g|| / ||W||`` of the layer's
  updates (the AutoFreeze criterion's quantity; a few norms per step).

Allocation: greedy under the cost model. Starting from every layer in every step, one
update is removed at a time from the layer where it loses the least learning signal
per operation (or byte, for the memory budget) saved, with diminishing returns per
update (``signal x sqrt(updates / T)``), until the cycle meets the budgets. The output
layer is always updated every step (as in every BPLS schedule); no layer drops below
``min_updates`` per cycle. Updates are spread evenly over the cycle, staggered
(the ``_m`` placement) when a memory budget is set.

Example:
    >>> allocate_updates([1.0, 1.0, 0.2, 0.1], 4, lambda c: (sum(c) / 16, 1.0), ops_budget=0.7)
    (4, 4, 2, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgetrain.engine import CALLBACKS, JsonLines
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.finetune.callback import LayerSchedule
from edgetrain.finetune.costing import Profile, ScheduleCost, _cost, _PlanCosts
from edgetrain.finetune.schedule import DIGITS, Schedule, even_placement, staggered_placement

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = [
    "SIGNALS",
    "AdaptiveSchedule",
    "adaptive_label",
    "allocate_updates",
    "parse_adaptive",
]

SIGNALS = ("weight_change", "grad_norm")
LOG_NAME = "adaptive_schedule.jsonl"

# (relative ops per step, relative peak memory) of a cycle given its update counts
CycleCost = Callable[[tuple[int, ...]], tuple[float, float]]


def allocate_updates(
    signals: Sequence[float],
    cycle: int,
    cost: CycleCost,
    ops_budget: float | None = None,
    memory_budget: float | None = None,
    min_updates: int = 1,
) -> tuple[int, ...]:
    """Update counts per layer (output layer first, each 0..``cycle``) that meet the
    budgets, removing updates where they lose the least signal per unit saved.

    ``cost`` maps counts to (ops per step, peak memory), both relative to updating every
    layer every step. The first layer keeps every update.

    Raises:
        ValueError: when even ``min_updates`` per layer exceeds a budget (the message says
            what the cheapest allocation costs).
    """
    rows = len(signals)
    top = max((s for s in signals if math.isfinite(s)), default=0.0)
    weights = [s / top if top > 0 and math.isfinite(s) else 1.0 for s in signals]
    counts = [cycle] * rows

    def value(i: int, c: int) -> float:
        return weights[i] * math.sqrt(c / cycle)

    def over(c: tuple[float, float]) -> tuple[float, float]:
        return (
            max(0.0, c[0] - ops_budget) if ops_budget is not None else 0.0,
            max(0.0, c[1] - memory_budget) if memory_budget is not None else 0.0,
        )

    current = cost(tuple(counts))
    while any(x > 1e-12 for x in over(current)):
        excess = over(current)
        best: tuple[float, int, tuple[float, float]] | None = None
        for i in range(1, rows):
            if counts[i] <= min_updates:
                continue
            trial = counts.copy()
            trial[i] -= 1
            after = cost(tuple(trial))
            # how much of the excess (ops and memory together) this removal takes away
            gain = sum(e - max(0.0, a) for e, a in zip(excess, over(after), strict=True))
            loss = value(i, counts[i]) - value(i, counts[i] - 1)
            if gain > 0:
                ratio = loss / gain
            else:  # takes nothing away: last, by signal lost per operation saved (it may
                # open the way to a removal that does, as staggered rows lower the peak)
                saved = current[0] - after[0]
                ratio = 1e18 * (1.0 + (loss / saved if saved > 0 else 1e18))
            if best is None or ratio < best[0]:
                best = (ratio, i, after)
        if best is None:
            said = []
            if ops_budget is not None:
                said.append(f"ops/step {current[0]:.3f} (budget {ops_budget:g})")
            if memory_budget is not None:
                said.append(f"peak memory {current[1]:.3f} (budget {memory_budget:g})")
            raise ValueError(
                f"the cheapest allocation with every layer updated at least {min_updates} of "
                f"{cycle} steps still costs {' and '.join(said)} of updating every layer; "
                "raise the budget, lower min_updates or schedule fewer layers"
            )
        _, i, current = best
        counts[i] -= 1
    return tuple(counts)


def adaptive_label(options: dict[str, Any]) -> str:
    """A short, filesystem-safe name for an adaptive case (``adaptive-ops0.7``,
    ``adaptive-mem0.9-grad_norm``)."""
    parts = ["adaptive"]
    if options.get("ops_budget") is not None:
        parts.append(f"ops{float(options['ops_budget']):g}")
    if options.get("memory_budget") is not None:
        parts.append(f"mem{float(options['memory_budget']):g}")
    signal = options.get("signal", "weight_change")
    if signal != "weight_change":
        parts.append(str(signal))
    return "-".join(parts)


_KEYS = {
    "ops": ("ops_budget", float),
    "mem": ("memory_budget", float),
    "memory": ("memory_budget", float),
    "signal": ("signal", str),
    "every": ("every", int),
    "smoothing": ("smoothing", float),
    "min_updates": ("min_updates", int),
}


def parse_adaptive(text: str) -> dict[str, Any]:
    """Adaptive-schedule options from the CLI form ``ops=0.7``, ``mem=0.9,ops=0.8`` or
    ``ops=0.6,signal=grad_norm,every=2`` (checked as the callback checks them).

    Example:
        >>> parse_adaptive("ops=0.7,signal=grad_norm")
        {'ops_budget': 0.7, 'signal': 'grad_norm'}

    Raises:
        ConfigError: naming the bad part.
    """
    options: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in _KEYS:
            raise ConfigError(
                f"adaptive schedule '{text}': '{part}' is not KEY=VALUE with KEY one of "
                f"{', '.join(_KEYS)} (e.g. ops=0.7 or mem=0.9,ops=0.8)"
            )
        name, kind = _KEYS[key.strip()]
        try:
            options[name] = kind(value.strip())
        except ValueError:
            raise ConfigError(
                f"adaptive schedule '{text}': {key.strip()} needs a {kind.__name__}, got "
                f"'{value.strip()}'"
            ) from None
    AdaptiveSchedule(1, **options)  # the callback's own checks, before any work
    return options


def _cost_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """The cost model's name for the optimizer state ``optimizer`` keeps."""
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.Adam):
        return "adam"
    if isinstance(optimizer, torch.optim.SGD):
        momentum = optimizer.param_groups[0].get("momentum", 0.0)
        return "momentum" if momentum else "sgd"
    return "adam"  # two state tensors per parameter: the common case, and the safe side


@CALLBACKS.register("adaptive-schedule")
class AdaptiveSchedule(LayerSchedule):
    """A layer schedule re-allocated every ``every`` epochs from measured learning signals,
    within a budget.

    Args:
        rows: the scheduled layers (the model's last ``rows`` weight layers).
        cycle: steps per cycle (T).
        ops_budget: most average MACs per step, relative to updating every row every step.
        memory_budget: most peak step memory, relative to the same (allocator accounting).
        signal: ``weight_change`` or ``grad_norm`` (see the module docstring).
        every: epochs between re-allocations.
        smoothing: weight of the previous signal in the running average (0: latest only).
        min_updates: fewest updates per cycle of any row (0 lets a row freeze).
        profile: the cost-model profile the budgets are counted with.
        fold_bn: fold batch-norms into their conv/linear first.

    The schedule of every epoch, the signals and the costs are appended to
    ``adaptive_schedule.jsonl`` in the run directory; each epoch's metrics record the
    average MACs per sample step actually trained (``schedule_step_macs``) and the
    cycle's costs relative to updating every row, so operations to a target accuracy
    count what each epoch really cost.
    """

    def __init__(
        self,
        rows: int,
        cycle: int = 4,
        ops_budget: float | None = None,
        memory_budget: float | None = None,
        signal: str = "weight_change",
        every: int = 1,
        smoothing: float = 0.5,
        min_updates: int = 1,
        profile: Profile = "reference",
        fold_bn: bool = True,
    ) -> None:
        if rows < 1:
            raise ConfigError(f"adaptive schedule: rows must be >= 1, got {rows}")
        if not 1 <= cycle < len(DIGITS):
            raise ConfigError(f"adaptive schedule: cycle must be 1..{len(DIGITS) - 1}, got {cycle}")
        if ops_budget is None and memory_budget is None:
            raise ConfigError(
                "adaptive schedule: give ops_budget and/or memory_budget (fractions of "
                "updating every layer every step, e.g. ops_budget: 0.7)"
            )
        for name, budget in (("ops_budget", ops_budget), ("memory_budget", memory_budget)):
            if budget is not None and not 0 < budget <= 1:
                raise ConfigError(
                    f"adaptive schedule: {name} is a fraction of updating every layer "
                    f"every step, in (0, 1]; got {budget}"
                )
        if signal not in SIGNALS:
            raise ConfigError(
                f"adaptive schedule: unknown signal '{signal}'; choose one of: {', '.join(SIGNALS)}"
            )
        if every < 1 or not 0 <= smoothing < 1 or not 0 <= min_updates <= cycle:
            raise ConfigError(
                "adaptive schedule: every must be >= 1, smoothing in [0, 1) and min_updates "
                f"in 0..{cycle} (got every={every}, smoothing={smoothing}, "
                f"min_updates={min_updates})"
            )
        super().__init__(DIGITS[cycle] * rows, fold_bn=fold_bn, optimise_m=False)
        self.cycle, self.ops_budget, self.memory_budget = cycle, ops_budget, memory_budget
        self.signal, self.every, self.smoothing = signal, every, smoothing
        self.min_updates, self.profile = min_updates, profile
        self.signals: list[float] = [math.nan] * rows
        self.counts: tuple[int, ...] = (cycle,) * rows
        self.cost: ScheduleCost | None = None
        self._restored = False
        self._ops: _PlanCosts | None = None
        self._memory: _PlanCosts | None = None
        self._cost_optimizer = ""
        self._model: nn.Module | None = None
        self._start: list[torch.Tensor] = []
        self._grad_sums: list[float] = []
        self._column_macs: list[float] = []
        self._macs_sum = 0.0

    @property
    def state_key(self) -> str:
        return "AdaptiveSchedule"

    @property
    def label(self) -> str:
        return adaptive_label(
            {
                "ops_budget": self.ops_budget,
                "memory_budget": self.memory_budget,
                "signal": self.signal,
            }
        )

    # -------------------------------------------------------------- set-up
    def configure_model(self, trainer: Trainer, model: nn.Module) -> None:
        shape = getattr(model, "input_shape", None) or (trainer.architecture or {}).get(
            "input_shape"
        )
        if not shape:
            raise EdgetrainError(
                "adaptive schedule: the model's input shape is unknown, so its budget cannot "
                "be costed; give the model an input_shape attribute or train from a recipe"
            )
        super().configure_model(trainer, model)
        self._model, self._shape = model, tuple(shape)
        # The budget is checked here, before the optimizer and the run folder exist, with
        # the optimizer state guessed (none); on_fit_start costs it with the real one.
        self._tables("sgd", trainer.batch_size)
        if not self._restored:
            self._reallocate()

    def _tables(self, optimizer: str, batch: int) -> None:
        assert self._model is not None
        self._cost_optimizer = optimizer
        self._ops = _PlanCosts(self._model, self._shape, self.profile, optimizer, 1, "allocator")
        self._memory = (
            self._ops
            if batch == 1
            else _PlanCosts(self._model, self._shape, self.profile, optimizer, batch, "allocator")
        )

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        super().on_fit_start(trainer, model)
        optimizer = _cost_optimizer(trainer.optimizer)
        if optimizer != self._cost_optimizer:
            self._tables(optimizer, trainer.batch_size)
        if not self._restored:
            self._reallocate()  # equal signals: the budget's schedule before any is measured
        self._set_schedule(self.counts)
        done = trainer.state.epoch
        if trainer.run_dir is not None and trainer.is_main:  # a resumed run's later epochs
            JsonLines(trainer.run_dir.path / LOG_NAME, strict=True).keep(
                lambda r: done > 0 and r.get("epoch", 0) <= done
            )

    def _schedule_of(self, counts: Sequence[int]) -> Schedule:
        text = "".join(DIGITS[c] for c in counts)
        staggered = self.memory_budget is not None and min(counts) < self.cycle
        if "0" not in text.rstrip("0"):  # expressible in the notation
            return Schedule.parse(text + ("_m" if staggered else ""))
        # a row frozen above trained ones (min_updates 0): an explicit matrix
        if staggered:
            pattern = staggered_placement(counts, self.cycle)
        else:
            pattern = [even_placement(c, self.cycle) for c in counts]
        return Schedule.from_matrix(["".join(map(str, row)) for row in pattern])

    def _relative(self, counts: tuple[int, ...]) -> tuple[float, float]:
        assert self._ops is not None and self._memory is not None and self._model is not None
        schedule = self._schedule_of(counts)
        ops = _cost(schedule, self._model, self._ops).relative_ops
        if self.memory_budget is None:
            return ops, 1.0
        return ops, _cost(schedule, self._model, self._memory).relative_peak_memory

    def _reallocate(self) -> None:
        try:
            self.counts = allocate_updates(
                self.signals,
                self.cycle,
                self._relative,
                self.ops_budget,
                self.memory_budget,
                self.min_updates,
            )
        except ValueError as exc:
            raise EdgetrainError(f"adaptive schedule ({self.schedule.rows} rows): {exc}") from None

    def _set_schedule(self, counts: Sequence[int]) -> None:
        assert self._ops is not None and self._model is not None
        self.schedule = self._schedule_of(counts)
        self.cost = _cost(self.schedule, self._model, self._ops)
        self._column_macs = [float(s.step_macs) for s in self.cost.steps]

    # ----------------------------------------------------------- per epoch
    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        super().on_epoch_start(trainer, model)
        self._macs_sum = 0.0
        self._grad_sums = [0.0] * len(self.params)
        if self.signal == "weight_change":
            self._start = [
                torch.cat([p.detach().reshape(-1) for p in ps]).clone() if ps else torch.empty(0)
                for ps in self.params
            ]

    def before_optimizer_step(
        self, trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        super().before_optimizer_step(trainer, model, optimizer)
        if self.signal != "grad_norm":
            return
        column = self.column
        for i, (row, params) in enumerate(zip(self.schedule.pattern, self.params, strict=True)):
            if not row[column]:
                continue
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                continue
            g = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))
            w = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.detach()) for p in params])
            )
            self._grad_sums[i] += float(g / w.clamp_min(1e-12))

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        self._macs_sum += self._column_macs[self.column]
        super().on_batch_end(trainer, model, outputs, loss)

    def _updates(self) -> list[int]:
        """How often each row was updated this epoch."""
        t = self.schedule.cycle_length
        columns = [(k + self._epoch) % t for k in range(self._index)]
        return [sum(row[c] for c in columns) for row in self.schedule.pattern]

    def _measure(self) -> list[float]:
        updates = self._updates()
        measured = []
        for i, (params, n) in enumerate(zip(self.params, updates, strict=True)):
            if n == 0 or not params:
                measured.append(math.nan)
            elif self.signal == "grad_norm":
                measured.append(self._grad_sums[i] / n)
            else:
                now = torch.cat([p.detach().reshape(-1) for p in params])
                start = self._start[i]
                change = torch.linalg.vector_norm(now - start) / torch.linalg.vector_norm(
                    start
                ).clamp_min(1e-12)
                measured.append(float(change) / n)
        return measured

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        assert self.cost is not None
        measured = self._measure()
        for i, m in enumerate(measured):
            if not math.isfinite(m):
                continue  # not updated: keep what was measured before
            old = self.signals[i]
            self.signals[i] = (
                m if not math.isfinite(old) else self.smoothing * old + (1 - self.smoothing) * m
            )
        steps = max(self._index, 1)
        trained = str(self.schedule)
        values = {
            "schedule_step_macs": self._macs_sum / steps,
            "schedule_relative_ops": self.cost.relative_ops,
            "schedule_peak_step_macs": float(self.cost.peak_step_macs),
            "schedule_peak_memory_bytes": float(self.cost.peak_memory_bytes),
            "schedule_peak_memory_reuse_bytes": float(self.cost.peak_memory_reuse_bytes),
            "schedule_relative_peak_memory": self.cost.relative_peak_memory,
        }
        trainer.log(**values)
        if (trainer.state.epoch % self.every) == 0:
            self._reallocate()
            self._set_schedule(self.counts)
        if trainer.run_dir is not None and trainer.is_main:
            JsonLines(trainer.run_dir.path / LOG_NAME, strict=True).append(
                {
                    "epoch": trainer.state.epoch,
                    "schedule": trained,
                    "layers": self.layers,
                    "measured": measured,
                    "signals": list(self.signals),
                    "next_schedule": str(self.schedule),
                    **values,
                }
            )

    def on_fit_end(self, trainer: Trainer, model: nn.Module) -> None:
        # every row this schedule may train stays trainable (not the next cycle's subset)
        for params in self.params:
            for p in params:
                p.requires_grad_(True)

    # ----------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "signals": list(self.signals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = tuple(int(c) for c in state["counts"])
        self.signals = [math.nan if s is None else float(s) for s in state["signals"]]
        self._restored = True
