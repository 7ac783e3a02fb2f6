"""The sweep report: PNG plots and one HTML page drawn from :class:`SweepData`.

Plots: the latency-accuracy Pareto front with the baseline and the reference recipe,
parameter importance (fANOVA), parameter-metric correlations, mean latency binned by
each pruner's sparsity, the best value so far by trial, and latency against MACs (does
latency follow MACs on this runtime?).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain.engine.rundir import atomic_write_text  # noqa: E402
from edgetrain.report.html import PAGE_STYLE, image_html, table_html  # noqa: E402
from edgetrain.search.analysis import SweepData, TrialRow  # noqa: E402

__all__ = ["build_sweep_report", "latency_macs_correlation", "plot_sweep"]

_X, _Y = "latency_ms", "top1"


def latency_macs_correlation(data: SweepData) -> float | None:
    """Pearson correlation of latency with MACs over complete trials (None if < 3)."""
    pts = [(t.get("macs"), t.get(_X)) for t in data.complete]
    pts = [(a, b) for a, b in pts if math.isfinite(a) and math.isfinite(b)]
    if len(pts) < 3 or len({a for a, _ in pts}) < 2:
        return None
    return float(np.corrcoef(np.array(pts).T)[0, 1])


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _dress(ax: Any, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Axis labels, optional title, a light grid and a small legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _mark_points(ax: Any, data: SweepData, x: str, y: str) -> None:
    """The baseline (star) and the reference recipe (diamond), when the sweep has them."""
    for point, marker, size, colour, label in (
        (data.baseline, "*", 220, "black", "baseline (unpruned)"),
        (data.reference, "D", 90, "tab:red", "reference recipe"),
    ):
        if point:
            ax.scatter(
                [point.get(x)],
                [point.get(y)],
                marker=marker,
                s=size,
                c=colour,
                label=label,
                zorder=5,
            )


def _pareto(data: SweepData, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    done = data.complete
    feasible = [t for t in done if t.feasible]
    infeasible = [t for t in done if not t.feasible]
    ruined = [t for t in done if t.metrics.get("ruined")]
    if feasible:
        ax.scatter(
            [t.get(_X) for t in feasible],
            [t.get(_Y) for t in feasible],
            c="tab:blue",
            alpha=0.8,
            label="meets the constraints",
        )
    if infeasible:
        ax.scatter(
            [t.get(_X) for t in infeasible],
            [t.get(_Y) for t in infeasible],
            facecolors="none",
            edgecolors="tab:gray",
            label="violates a constraint",
        )
    if ruined:
        ax.scatter(
            [t.get(_X) for t in ruined],
            [t.get(_Y) for t in ruined],
            marker="x",
            s=18,
            c="black",
            linewidths=0.8,
            label="at chance before fine-tuning",
        )
    front = data.pareto(_X, _Y)
    if front:
        ax.step(
            [t.get(_X) for t in front],
            [t.get(_Y) for t in front],
            where="post",
            c="tab:green",
            label="Pareto front",
        )
    _mark_points(ax, data, _X, _Y)
    _dress(ax, "latency (ms, median)", "test top-1 (%)", f"{data.name}: latency vs accuracy")
    return _save(fig, path)


def _importance(data: SweepData, path: Path) -> Path | None:
    if not data.importance:
        return None
    n = len(data.importance)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.5), squeeze=False)
    for ax, (metric, values) in zip(axes[0], data.importance.items(), strict=True):
        names = list(values)[::-1]
        ax.barh(names, [values[k] for k in names], color="tab:blue")
        ax.set_title(f"fANOVA importance for {metric}")
        ax.set_xlim(0, 1)
    return _save(fig, path)


def _correlations(data: SweepData, path: Path) -> Path | None:
    corr = data.correlations()
    if not corr:
        return None
    params = list(corr)
    metrics = list(next(iter(corr.values())))
    grid = np.array([[corr[p][m] for m in metrics] for p in params], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 3, 0.5 * len(params) + 2))
    im = ax.imshow(grid, cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(metrics)), metrics, rotation=30, ha="right")
    ax.set_yticks(range(len(params)), params)
    for i in range(len(params)):
        for j in range(len(metrics)):
            if math.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:+.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="Spearman rank correlation")
    ax.set_title("parameter-metric correlation")
    return _save(fig, path)


def _binned(data: SweepData, path: Path) -> Path | None:
    params = [p for p in data.params if p.endswith(".sparsity")]
    curves = {p: data.binned(p, _X) for p in params}
    curves = {p: c for p, c in curves.items() if c}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, rows in curves.items():
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=p.split(".")[0])
    if data.baseline:
        ax.axhline(data.baseline.get(_X), ls="--", c="black", lw=1, label="baseline")
    _dress(ax, "sparsity (binned)", "mean latency (ms)", "latency vs sparsity, per pruner")
    return _save(fig, path)


def _best_so_far(data: SweepData, path: Path) -> Path | None:
    curves = [(name, data.best_so_far(name)) for name, _ in data.objectives]
    curves = [(n, c) for n, c in curves if c]
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves, strict=True):
        ax.step([r[0] for r in rows], [r[1] for r in rows], where="post")
        if data.baseline and name in data.baseline:
            ax.axhline(data.baseline[name], ls="--", c="black", lw=1, label="baseline")
        if data.reference and name in data.reference:
            ax.axhline(data.reference[name], ls=":", c="tab:red", lw=1, label="reference")
        _dress(ax, "trial", f"best feasible {name}")
    return _save(fig, path)


def _latency_vs_macs(data: SweepData, path: Path) -> Path | None:
    rows = [t for t in data.complete if math.isfinite(t.get("macs"))]
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(
        [t.get("macs") / 1e6 for t in rows], [t.get(_X) for t in rows], alpha=0.7, label="trials"
    )
    _mark_points(ax, _scaled(data), "macs_m", _X)
    r = latency_macs_correlation(data)
    title = "latency vs MACs" + ("" if r is None else f" (Pearson r = {r:.2f})")
    _dress(ax, "inference MACs (M)", "latency (ms, median)", title)
    return _save(fig, path)


def _scaled(data: SweepData) -> SweepData:
    def scale(d: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if not d else {**d, "macs_m": float(d.get("macs", math.nan)) / 1e6}

    return SweepData(
        data.name, data.objectives, [], scale(data.baseline) or {}, scale(data.reference)
    )


def plot_sweep(data: SweepData, folder: str | Path) -> list[Path]:
    """Write the sweep's plots into ``folder``; returns the files written."""
    folder = Path(folder)
    makers = (
        ("pareto.png", _pareto),
        ("importance.png", _importance),
        ("correlations.png", _correlations),
        ("latency_vs_sparsity.png", _binned),
        ("best_so_far.png", _best_so_far),
        ("latency_vs_macs.png", _latency_vs_macs),
    )
    out = []
    for name, make in makers:
        written = make(data, folder / name)
        if written is not None:
            out.append(written)
    return out


def _row(label: str, t: dict[str, Any] | TrialRow, params: list[str]) -> list[Any]:
    m = t.metrics if isinstance(t, TrialRow) else t
    p = t.params if isinstance(t, TrialRow) else {}
    return [
        label,
        m.get("top1", "-"),
        m.get("top1_drop", "-"),
        m.get("latency_ms", "-"),
        m.get("latency_ratio", "-"),
        m.get("macs", "-"),
        m.get("params", "-"),
        *[p.get(k, "-") for k in params],
    ]


def build_sweep_report(data: SweepData, folder: str | Path) -> Path:
    """Plots and ``report.html`` of a sweep in ``folder``; returns the page."""
    folder = Path(folder)
    images = plot_sweep(data, folder / "plots")
    params = data.params
    header = [
        "trial",
        "top-1 %",
        "drop (pts)",
        "latency ms",
        "vs baseline",
        "MACs",
        "params",
        *params,
    ]
    best = data.best(10)
    beat = data.beats_reference()
    r = latency_macs_correlation(data)
    facts = [
        ["trials measured", len(data.complete)],
        ["failed", len(data.failed)],
        ["pruned early (fine-tuning stopped)", len(data.pruned)],
        ["duplicates (result reused)", sum(t.duplicate_of is not None for t in data.complete)],
        ["feasible", sum(t.feasible for t in data.complete)],
        ["ruined after pruning", f"{100 * data.ruined_rate:.1f} %"],
        ["beat the reference on latency and top-1", "-" if data.reference is None else len(beat)],
        ["latency-MACs correlation (Pearson)", "-" if r is None else f"{r:.3f}"],
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>sweep {html.escape(data.name)}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<h1>sweep {html.escape(data.name)}</h1>",
        "<p>objectives: "
        + ", ".join(f"{html.escape(n)} ({g})" for n, g in data.objectives)
        + "</p>",
        table_html(["", "value"], facts),
        "<h2>Best trials</h2>",
        table_html(
            header,
            [_row("baseline", data.baseline, params)]
            + ([_row("reference", data.reference, params)] if data.reference else [])
            + [_row(str(t.number), t, params) for t in best],
        ),
    ]
    if data.importance:
        parts.append("<h2>Parameter importance (fANOVA)</h2>")
        names = list(data.importance)
        keys = list(dict.fromkeys(k for v in data.importance.values() for k in v))
        parts.append(
            table_html(
                ["parameter", *names],
                [[k, *[data.importance[n].get(k, "-") for n in names]] for k in keys],
            )
        )
    parts.append("<h2>Plots</h2>")
    parts += [image_html(p) for p in images]
    if data.pruned:
        parts.append("<h2>Pruned trials</h2>")
        parts.append(
            table_html(
                ["trial", "stopped after epoch", "top-1 then", "MACs", *params],
                [
                    [
                        t.number,
                        t.metrics.get("pruned_at_epoch", "-"),
                        t.metrics.get("top1_at_pruning", "-"),
                        t.metrics.get("macs", "-"),
                        *[t.params.get(p, "-") for p in params],
                    ]
                    for t in data.pruned
                ],
            )
        )
    if data.failed:
        parts.append("<h2>Failed trials</h2>")
        parts.append(
            table_html(["trial", "reason"], [[t.number, t.fail_reason or "-"] for t in data.failed])
        )
    if data.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{html.escape(n)}</li>" for n in data.notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    page = folder / "report.html"
    atomic_write_text(page, "\n".join(parts))
    return page
