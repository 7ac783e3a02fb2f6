"""The search space: sweep parameters as Optuna suggestions, and constraints in Optuna's
convention (a trial is feasible when every value is <= 0; the samplers read them from
the trial)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edgetrain.search.config import ConstraintSpec, ParameterSpec

__all__ = ["constraint_label", "constraint_values", "grid_size", "suggest"]


def suggest(trial: Any, parameters: dict[str, ParameterSpec]) -> dict[str, Any]:
    """The trial's value of every parameter (fixed ones included), by dotted name."""
    values: dict[str, Any] = {}
    for name, spec in parameters.items():
        if spec.value is not None:
            values[name] = spec.value
        elif spec.values is not None:
            values[name] = trial.suggest_categorical(name, spec.values)
        elif spec.is_int:
            step = int(spec.step) if spec.step else 1
            values[name] = trial.suggest_int(name, spec.min, spec.max, step=step, log=spec.log)
        else:
            values[name] = trial.suggest_float(
                name, float(spec.min), float(spec.max), step=spec.step, log=spec.log
            )
    return values


def grid_size(parameters: dict[str, ParameterSpec]) -> int:
    """Number of points of a grid sweep (every parameter gives values)."""
    return math.prod(len(p.values) for p in parameters.values() if p.values is not None)


def constraint_label(spec: ConstraintSpec) -> str:
    """The constraint's key in Optuna (``top1>=85``, ``latency_ms<=2``)."""
    bounds = [f">={spec.min:g}"] if spec.min is not None else []
    bounds += [f"<={spec.max:g}"] if spec.max is not None else []
    return spec.name + ",".join(bounds)


def constraint_values(
    constraints: Sequence[ConstraintSpec], metrics: dict[str, Any]
) -> list[float]:
    """Optuna's constraint values of a trial's metrics (<= 0 when a constraint is met)."""
    return [c.violation(float(metrics.get(c.name, math.nan))) for c in constraints]
