"""A sweep's results as plain data, for tables and plots (the report draws them).

:func:`load_sweep_data` reads a study from its storage once; everything else works on
the :class:`SweepData` it returns: best trials, the Pareto front, parameter importance
(Optuna's fANOVA), per-parameter correlations, binned metric vs parameter, best-so-far,
trials that beat the hand-made reference on both axes and the ruined-network rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetrain._optional import require
from edgetrain.errors import ConfigError, one_line
from edgetrain.search.config import METRICS

__all__ = ["SweepData", "TrialRow", "load_sweep_data", "pareto_front"]


@dataclass
class TrialRow:
    """One trial: its state, parameters and recorded metrics."""

    number: int
    state: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    feasible: bool = True
    duplicate_of: int | None = None
    fail_reason: str | None = None

    def get(self, metric: str) -> float:
        value = self.metrics.get(metric)
        return float(value) if isinstance(value, (int, float)) else math.nan


def pareto_front(
    rows: Sequence[TrialRow], x: str = "latency_ms", y: str = "top1"
) -> list[TrialRow]:
    """Rows not dominated in (lower ``x``, higher ``y``), sorted by ``x``."""
    points = [r for r in rows if math.isfinite(r.get(x)) and math.isfinite(r.get(y))]
    points.sort(key=lambda r: (r.get(x), -r.get(y)))
    front: list[TrialRow] = []
    best_y = -math.inf
    for r in points:
        if r.get(y) > best_y:
            front.append(r)
            best_y = r.get(y)
    return front


@dataclass
class SweepData:
    """Everything a sweep report shows, read from the study."""

    name: str
    objectives: list[tuple[str, str]]
    trials: list[TrialRow]
    baseline: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "COMPLETE"]

    @property
    def failed(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "FAIL"]

    @property
    def pruned(self) -> list[TrialRow]:
        """Trials the trial pruner stopped during fine-tuning (their last figures are in
        ``metrics``: ``pruned_at_epoch``, ``top1_at_pruning``)."""
        return [t for t in self.trials if t.state == "PRUNED"]

    @property
    def params(self) -> list[str]:
        return list(dict.fromkeys(p for t in self.trials for p in t.params))

    def best(self, k: int = 5) -> list[TrialRow]:
        """Feasible complete trials, best first: by the first objective, or the Pareto
        front of the first two objectives for a multi-objective sweep."""
        feasible = [t for t in self.complete if t.feasible and t.duplicate_of is None]
        name, goal = self.objectives[0]
        if len(self.objectives) > 1:
            (x, gx), (y, gy) = self.objectives[:2]
            rows = _oriented(feasible, x, gx, y, gy)
            return rows[:k] if k else rows
        sign = 1.0 if goal == "minimize" else -1.0
        ranked = sorted(
            (t for t in feasible if math.isfinite(t.get(name))), key=lambda t: sign * t.get(name)
        )
        return ranked[:k]

    def pareto(self, x: str = "latency_ms", y: str = "top1") -> list[TrialRow]:
        """The latency-accuracy front of the complete trials."""
        return pareto_front(self.complete, x, y)

    def beats_reference(self, x: str = "latency_ms", y: str = "top1") -> list[TrialRow]:
        """Complete trials better than the reference recipe on both axes."""
        if not self.reference:
            return []
        rx, ry = float(self.reference.get(x, math.nan)), float(self.reference.get(y, math.nan))
        return [t for t in self.complete if t.get(x) < rx and t.get(y) > ry]

    @property
    def ruined_rate(self) -> float:
        """Share of measured candidates whose pruned network was at chance level."""
        done = self.complete
        return sum(bool(t.metrics.get("ruined")) for t in done) / len(done) if done else 0.0

    def best_so_far(self, metric: str | None = None) -> list[tuple[int, float]]:
        """``(trial number, best value so far)`` of a metric over complete feasible trials."""
        name = metric or self.objectives[0][0]
        goal = dict(self.objectives).get(name, METRICS.get(name, "minimize"))
        better = min if goal == "minimize" else max
        out: list[tuple[int, float]] = []
        best = math.nan
        for t in sorted(self.complete, key=lambda r: r.number):
            v = t.get(name)
            if not t.feasible or not math.isfinite(v):
                continue
            best = v if math.isnan(best) else better(best, v)
            out.append((t.number, best))
        return out

    def correlations(self, metrics: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Spearman rank correlation of each numeric parameter with each metric."""
        from scipy.stats import spearmanr

        names = list(metrics or ("top1", "latency_ms", "macs", *(n for n, _ in self.objectives)))
        names = list(dict.fromkeys(names))
        out: dict[str, dict[str, float]] = {}
        done = self.complete
        for p in self.params:
            xs = [t.params.get(p) for t in done]
            if not all(isinstance(v, (int, float)) for v in xs) or len(set(xs)) < 2:
                continue
            row = {}
            for m in names:
                ys = [t.get(m) for t in done]
                ok = [(a, b) for a, b in zip(xs, ys, strict=True) if math.isfinite(b)]
                if len(ok) < 3 or len({b for _, b in ok}) < 2:
                    row[m] = math.nan
                    continue
                rho = spearmanr([a for a, _ in ok], [b for _, b in ok]).statistic
                row[m] = float(rho)
            out[p] = row
        return out

    def binned(
        self, param: str, metric: str = "latency_ms", bins: int = 8
    ) -> list[tuple[float, float, int]]:
        """``(bin centre, mean metric, count)`` of complete trials binned by ``param``."""
        pairs = [
            (float(t.params[param]), t.get(metric))
            for t in self.complete
            if isinstance(t.params.get(param), (int, float)) and math.isfinite(t.get(metric))
        ]
        if not pairs:
            return []
        xs = np.array([p[0] for p in pairs])
        ys = np.array([p[1] for p in pairs])
        lo, hi = float(xs.min()), float(xs.max())
        if hi == lo:
            return [(lo, float(ys.mean()), len(ys))]
        edges = np.linspace(lo, hi, bins + 1)
        idx = np.clip(np.digitize(xs, edges) - 1, 0, bins - 1)
        return [
            (
                float((edges[i] + edges[i + 1]) / 2),
                float(ys[idx == i].mean()),
                int((idx == i).sum()),
            )
            for i in range(bins)
            if (idx == i).any()
        ]


def _oriented(rows: list[TrialRow], x: str, gx: str, y: str, gy: str) -> list[TrialRow]:
    sx = 1.0 if gx == "minimize" else -1.0
    sy = -1.0 if gy == "minimize" else 1.0
    # pareto_front minimises x and maximises y; orient both objectives that way.
    flipped = [
        TrialRow(t.number, t.state, t.params, {x: sx * t.get(x), y: sy * t.get(y)}) for t in rows
    ]
    keep = {t.number for t in pareto_front(flipped, x, y)}
    return [t for t in sorted(rows, key=lambda r: sx * r.get(x)) if t.number in keep]


def _importance(study: Any, objectives: list[tuple[str, str]]) -> tuple[dict, list[str]]:
    optuna = require("optuna", "search")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}, ["parameter importance needs at least 3 complete trials"]
    out: dict[str, dict[str, float]] = {}
    notes = []
    for i, (name, _) in enumerate(objectives):
        try:
            values = optuna.importance.get_param_importances(
                study,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t, i=i: t.values[i],
            )
        except (RuntimeError, ValueError) as exc:
            notes.append(f"no parameter importance for {name}: {one_line(exc)}")
            continue
        out[name] = {k: float(v) for k, v in values.items()}
    return out, notes


def load_sweep_data(study_name: str, storage: str, importance: bool = True) -> SweepData:
    """Read a sweep's study from ``storage``.

    Raises:
        ConfigError: no study of that name in the storage.
    """
    optuna = require("optuna", "search")
    from edgetrain.search.study import BOOKKEEPING_ATTRS, mask_url, open_storage, quiet_optuna

    store = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(store)) or "none"
        raise ConfigError(
            f"no sweep '{study_name}' in {mask_url(storage)}; sweeps there: {names}"
        ) from None
    config = study.user_attrs.get("config", {})
    metric = config.get("metric", [])
    specs = metric if isinstance(metric, list) else [metric]
    objectives = [
        (m["name"], m.get("goal") or d.name.lower())
        for m, d in zip(specs, study.directions, strict=False)
    ]
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            continue
        attrs = dict(t.user_attrs)
        constraints = attrs.get("constraints") or []
        rows.append(
            TrialRow(
                number=t.number,
                state=t.state.name,
                params=dict(t.params),
                metrics={k: v for k, v in attrs.items() if k not in BOOKKEEPING_ATTRS},
                feasible=all(c <= 0 for c in constraints),
                duplicate_of=attrs.get("duplicate_of"),
                fail_reason=attrs.get("fail_reason"),
            )
        )
    with quiet_optuna():
        imp, notes = _importance(study, objectives) if importance else ({}, [])
    return SweepData(
        name=study_name,
        objectives=objectives,
        trials=rows,
        baseline=study.user_attrs.get("baseline", {}),
        reference=study.user_attrs.get("reference"),
        config=config,
        importance=imp,
        notes=notes,
    )
