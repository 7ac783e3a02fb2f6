"""The sweep report's data: Pareto front, best trials, correlations, bins, best-so-far."""

from __future__ import annotations

import math

import pytest

from edgetrain.search.analysis import SweepData, TrialRow, pareto_front


def _row(n, lat, top1, s=0.0, feasible=True, state="COMPLETE", ruined=False, dup=None):
    metrics = {"latency_ms": lat, "top1": top1, "macs": 1000 * lat, "ruined": ruined}
    return TrialRow(n, state, {"a.sparsity": s}, metrics, feasible, dup)


ROWS = [
    _row(0, 1.0, 90.0, 0.0),
    _row(1, 0.8, 88.0, 0.3),
    _row(2, 0.9, 85.0, 0.2),  # dominated by 1
    _row(3, 0.5, 60.0, 0.8, ruined=True),
    _row(4, 0.6, 80.0, 0.6, feasible=False),
    _row(5, 0.8, 88.0, 0.3, dup=1),
    _row(6, math.nan, math.nan, 0.9, state="FAIL"),
]


def _data(objectives=(("latency_ms", "minimize"),), reference=None):
    return SweepData("s", list(objectives), ROWS, {"latency_ms": 1.0, "top1": 90.0}, reference)


def test_pareto_front_keeps_only_non_dominated_points():
    front = pareto_front(ROWS[:5])
    assert [r.number for r in front] == [3, 4, 1, 0]


def test_best_ranks_feasible_unique_trials_by_the_objective():
    assert [t.number for t in _data().best(3)] == [3, 1, 2]
    by_top1 = _data([("top1", "maximize")]).best(2)
    assert [t.number for t in by_top1] == [0, 1]
    multi = _data([("latency_ms", "minimize"), ("top1", "maximize")]).best(0)
    assert [t.number for t in multi] == [3, 1, 0]


def test_counts_ruined_rate_and_reference():
    data = _data(reference={"latency_ms": 0.95, "top1": 86.0})
    assert len(data.complete) == 6 and len(data.failed) == 1
    assert data.ruined_rate == pytest.approx(1 / 6)
    assert sorted(t.number for t in data.beats_reference()) == [1, 5]


def test_best_so_far_is_monotone_and_skips_infeasible():
    curve = _data().best_so_far()
    assert curve == [(0, 1.0), (1, 0.8), (2, 0.8), (3, 0.5), (5, 0.5)]


def test_correlations_and_bins():
    corr = _data().correlations(["latency_ms", "top1"])
    assert corr["a.sparsity"]["latency_ms"] < -0.8
    assert corr["a.sparsity"]["top1"] < -0.8
    bins = _data().binned("a.sparsity", "latency_ms", bins=2)
    assert sum(c for _, _, c in bins) == 6
    assert bins[0][1] > bins[1][1]  # more sparsity, lower latency
