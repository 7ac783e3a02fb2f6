"""What a layer schedule costs under the cost model: per-step plans, the cycle's average
and peak against conventional training, the memory-optimised (``_m``) placement, and
schedules suggested for budgets.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edgetrain.cost import DeviceProfile, StepCost, analyze, load_profile, step_fit
from edgetrain.finetune.schedule import DIGITS, Schedule, even_placement
from edgetrain.models import parameter_layers

__all__ = [
    "ScheduleCost",
    "optimise_placement",
    "schedule_cost",
    "schedule_layers",
    "step_plans",
    "suggest_schedules",
]

Profile = str | Path | DeviceProfile


def schedule_layers(model: nn.Module, schedule: Schedule) -> list[str]:
    """The weight layers the schedule's rows drive, output layer first.

    Raises:
        ValueError: when the schedule has more rows than the model has weight layers.
    """
    layers = [name for name, _ in parameter_layers(model)]
    if schedule.rows > len(layers):
        raise ValueError(
            f"schedule '{schedule}' has {schedule.rows} rows but the model has only "
            f"{len(layers)} weight layers ({', '.join(layers)})"
        )
    return layers[::-1][: schedule.rows]


def step_plans(model: nn.Module, schedule: Schedule) -> list[list[str]]:
    """One cost-model plan per step of the cycle: the layers updated in that step."""
    names = schedule_layers(model, schedule)
    return [
        [n for n, on in zip(names, schedule.active(t), strict=True) if on]
        for t in range(schedule.cycle_length)
    ]


@dataclass(frozen=True)
class ScheduleCost:
    """Per-step costs of one cycle and the conventional step (every trained row)."""

    schedule: Schedule
    steps: list[StepCost]
    conventional: StepCost

    @property
    def average_step_macs(self) -> float:
        return sum(s.step_macs for s in self.steps) / len(self.steps)

    @property
    def peak_step_macs(self) -> int:
        return max(s.step_macs for s in self.steps)

    @property
    def peak_memory_bytes(self) -> int:
        return max(s.memory_bytes for s in self.steps)

    @property
    def peak_memory_reuse_bytes(self) -> int:
        return max(s.memory_reuse_bytes for s in self.steps)

    @property
    def relative_ops(self) -> float:
        return self.average_step_macs / self.conventional.step_macs

    @property
    def relative_estimated_ops(self) -> float:
        """Average step / conventional step under the profile's estimate: calibrated
        rates, per-call and per-step costs included (``relative_ops`` counts MACs only)."""
        mean = sum(s.estimated_ops for s in self.steps) / len(self.steps)
        return mean / self.conventional.estimated_ops

    @property
    def relative_peak_memory(self) -> float:
        return self.peak_memory_bytes / self.conventional.memory_bytes

    @property
    def relative_peak_memory_reuse(self) -> float:
        return self.peak_memory_reuse_bytes / self.conventional.memory_reuse_bytes


class _PlanCosts:
    """Step costs of arbitrary plans of one model, computed in batches and memoised."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        profile: Profile,
        optimizer: str,
        batch_size: int,
        memory: str,
    ) -> None:
        self.model, self.shape = model, tuple(input_shape)
        self.options = {
            "profile": profile,
            "optimizer": optimizer,
            "batch_size": batch_size,
            "memory": memory,
        }
        self.cache: dict[frozenset[str], StepCost] = {}

    def costs(self, plans: Sequence[Sequence[str]]) -> list[StepCost]:
        missing = list(dict.fromkeys(frozenset(p) for p in plans if frozenset(p) not in self.cache))
        if missing:
            report = analyze(
                self.model, self.shape, plans=[sorted(p) for p in missing], **self.options
            )
            self.cache.update(zip(missing, report.steps(), strict=True))
        return [self.cache[frozenset(p)] for p in plans]


def _cost(schedule: Schedule, model: nn.Module, table: _PlanCosts) -> ScheduleCost:
    plans = step_plans(model, schedule)
    trained = [
        n
        for n, row in zip(schedule_layers(model, schedule), schedule.pattern, strict=True)
        if any(row)
    ]
    *steps, conventional = table.costs([*plans, trained])
    return ScheduleCost(schedule, steps, conventional)


def schedule_cost(
    model: nn.Module,
    input_shape: Sequence[int],
    schedule: Schedule,
    profile: Profile = "reference",
    optimizer: str = "sgd",
    batch_size: int = 1,
    memory: str = "allocator",
) -> ScheduleCost:
    """Cost of every step of ``schedule`` on ``model`` and of the conventional step
    (``memory``: the cost model's step-memory accounting, ``allocator`` or
    ``layerwise``).

    Example:
        >>> from edgetrain.models import create
        >>> c = schedule_cost(create("vgg_small"), (3, 32, 32), Schedule.parse("4421"))
        >>> round(c.relative_ops, 3) < 1.0
        True
    """
    table = _PlanCosts(model, input_shape, profile, optimizer, batch_size, memory)
    return _cost(schedule, model, table)


def optimise_placement(
    schedule: Schedule,
    model: nn.Module,
    input_shape: Sequence[int],
    profile: Profile = "reference",
    optimizer: str = "sgd",
    batch_size: int = 1,
    max_candidates: int = 4096,
    memory: str = "layerwise",
) -> Schedule:
    """The placement of the partial rows (updated in some steps) that minimises the
    cycle's peak memory (naive, then with reuse, then peak ops); rows keep their update
    counts. Exhaustive over rotations when there are at most ``max_candidates``
    placements, else the staggered ``_m`` placement is kept. ``memory`` is the
    accounting compared: ``layerwise`` by default (the on-device rule the ``_m``
    schedules come from, where each update is applied as its gradient appears; cheap
    enough to compare thousands of placements), or ``allocator``."""
    cycle = schedule.cycle_length
    partial = [i for i, row in enumerate(schedule.pattern) if 0 < sum(row) < cycle]
    options = {
        i: sorted({tuple(even_placement(sum(schedule.pattern[i]), cycle, o)) for o in range(cycle)})
        for i in partial
    }
    combos = 1
    for i in partial:
        combos *= len(options[i])
    if not partial or combos > max_candidates:
        return schedule
    table = _PlanCosts(model, input_shape, profile, optimizer, batch_size, memory)

    def key(c: ScheduleCost) -> tuple[int, int, int]:
        return (c.peak_memory_bytes, c.peak_memory_reuse_bytes, c.peak_step_macs)

    best, best_key = schedule, key(_cost(schedule, model, table))  # ties keep the given one
    for choice in itertools.product(*(options[i] for i in partial)):
        pattern = [list(r) for r in schedule.pattern]
        for i, row in zip(partial, choice, strict=True):
            pattern[i] = list(row)
        candidate = schedule.with_pattern(pattern)
        candidate_key = key(_cost(candidate, model, table))
        if candidate_key < best_key:
            best, best_key = candidate, candidate_key
    return best


def suggest_schedules(
    model: nn.Module,
    input_shape: Sequence[int],
    max_ops_per_step: float | None = None,
    max_peak_mem: float | None = None,
    cycle: int = 4,
    max_rows: int | None = None,
    profile: Profile = "reference",
    optimizer: str = "sgd",
    batch_size: int = 1,
    top: int = 10,
    memory: str = "allocator",
) -> list[ScheduleCost]:
    """Schedules that fit the budgets, ranked by layer updates per step (the sum of the
    rows' mean update rates: more training first; ties: more layers, fewer ops).

    Candidates update layers near the output at least as often as those below them
    (non-increasing counts) and spread the partial rows across steps (``_m``
    placement). Budgets: ``max_ops_per_step`` (MACs of the most expensive step) and
    ``max_peak_mem`` (bytes: the step's peak under the ``memory`` accounting). A device
    profile with SRAM and flash sizes is a budget too: every step of the cycle must fit
    the device (:func:`~edgetrain.cost.step_fit`: frozen weights stay in flash, trained
    ones and everything the step creates take SRAM).
    """
    layers = len(parameter_layers(model))
    rows = min(max_rows or layers, layers)
    device = load_profile(profile)
    sized = device.sram_bytes is not None or device.flash_bytes is not None
    table = _PlanCosts(model, input_shape, device, optimizer, batch_size, memory)
    fits = []
    for n in range(1, rows + 1):
        for tail in itertools.combinations_with_replacement(range(cycle, 0, -1), n - 1):
            counts = (cycle, *tail)
            text = "".join(DIGITS[c] for c in counts) + ("_m" if min(counts) < cycle else "")
            c = _cost(Schedule.parse(text), model, table)
            if max_ops_per_step is not None and c.peak_step_macs > max_ops_per_step:
                continue
            if max_peak_mem is not None and c.peak_memory_reuse_bytes > max_peak_mem:
                continue
            if sized and not all(step_fit(st, device).fits for st in c.steps):
                continue
            fits.append(c)

    def rank(c: ScheduleCost) -> tuple[float, int, float]:
        s = c.schedule
        return (-sum(sum(r) for r in s.pattern) / s.cycle_length, -s.rows, c.average_step_macs)

    return sorted(fits, key=rank)[:top]
