"""Search: Optuna studies over compression recipes, measured on the target runtime.

A sweep config names a trained run, a compression recipe, the parameters to search and
the metric(s) to optimise; each trial compresses, fine-tunes, exports, quantizes and
benchmarks one candidate (:mod:`edgetrain.search.objective`). Studies live in Optuna's
RDB storage (SQLite by default, PostgreSQL for workers on several machines).

Needs the ``[search]`` extra (Optuna; psycopg for PostgreSQL).

Example:
    >>> from edgetrain.search import load_sweep, run
    >>> config, base = load_sweep("sweep.yaml")  # doctest: +SKIP
    >>> run(config, base).completed  # doctest: +SKIP
    20
"""

from __future__ import annotations

from edgetrain.search.analysis import SweepData, TrialRow, load_sweep_data
from edgetrain.search.bench_queue import BenchQueue
from edgetrain.search.config import METRICS, SweepConfig, load_sweep
from edgetrain.search.methods import SAMPLERS, make_sampler
from edgetrain.search.objective import (
    Candidate,
    SweepContext,
    TrialFailed,
    config_key,
    evaluate_candidate,
)
from edgetrain.search.pruners import TRIAL_PRUNERS
from edgetrain.search.study import (
    WorkSummary,
    bench_worker,
    default_storage,
    open_storage,
    open_study,
    run,
    sweep_folder,
)

__all__ = [
    "TRIAL_PRUNERS",
    "BenchQueue",
    "bench_worker",
    "METRICS",
    "SAMPLERS",
    "Candidate",
    "SweepConfig",
    "SweepContext",
    "SweepData",
    "TrialFailed",
    "TrialRow",
    "WorkSummary",
    "config_key",
    "default_storage",
    "evaluate_candidate",
    "load_sweep",
    "load_sweep_data",
    "make_sampler",
    "open_storage",
    "open_study",
    "run",
    "sweep_folder",
]
