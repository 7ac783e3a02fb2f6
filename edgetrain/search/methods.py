"""Search methods: a sweep's ``method`` as an Optuna sampler registered under its name.

An entry is called as ``fn(config, seed)`` and returns the sampler. Its metadata says
what the sweep must respect: ``enumerates`` (every parameter gives ``values``; the grid
points are queued, so workers cover the grid once) and ``min_objectives`` (a
multi-objective method needs that many metrics).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from edgetrain._optional import require
from edgetrain.registry import Registry

if TYPE_CHECKING:
    from edgetrain.search.config import SweepConfig

__all__ = ["SAMPLERS", "grid_points", "make_sampler"]

SAMPLERS: Registry[Any] = Registry("search method")


@SAMPLERS.register("grid", enumerates=True)
def _grid(config: SweepConfig, seed: int) -> Any:
    optuna = require("optuna", "search")
    space = {k: list(p.values) for k, p in config.parameters.items() if p.values is not None}
    return optuna.samplers.GridSampler(space, seed=seed)


@SAMPLERS.register("random")
def _random(config: SweepConfig, seed: int) -> Any:
    return require("optuna", "search").samplers.RandomSampler(seed=seed)


@SAMPLERS.register("bayes")
def _tpe(config: SweepConfig, seed: int) -> Any:
    optuna = require("optuna", "search")
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


@SAMPLERS.register("gp")
def _gp(config: SweepConfig, seed: int) -> Any:
    optuna = require("optuna", "search")
    return optuna.samplers.GPSampler(seed=seed)


@SAMPLERS.register("nsga2", min_objectives=2)
def _nsga2(config: SweepConfig, seed: int) -> Any:
    optuna = require("optuna", "search")
    population = max(4, min(50, config.budget.trials // 4))
    return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)


def make_sampler(config: SweepConfig, seed: int | None = None) -> Any:
    """The Optuna sampler of the sweep's ``method`` (seeded with ``seed``, by default the
    sweep's seed; workers pass their own so that they do not propose the same points)."""
    return SAMPLERS.create(config.method, config=config, seed=config.seed if seed is None else seed)


def grid_points(config: SweepConfig) -> list[dict[str, Any]] | None:
    """Every point of an enumerating method's grid, in order; None for other methods."""
    if not SAMPLERS.entry(config.method).meta.get("enumerates"):
        return None
    grid = {n: p.values for n, p in config.parameters.items() if p.values is not None}
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
