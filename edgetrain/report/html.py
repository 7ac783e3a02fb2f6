"""One self-contained HTML page (images embedded as base64) for one or several runs."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from edgetrain.report.extract import RunRecord

__all__ = [
    "PAGE_STYLE",
    "SUMMARY_HEADER",
    "image_html",
    "render_html",
    "summary_rows",
    "table_html",
]

PAGE_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d1d1f;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th{background:#f5f5f7}td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:.5rem 0}.status-completed{color:#1a7f37}
.status-interrupted,.status-failed,.status-running{color:#b35900}
pre{background:#f5f5f7;padding:.6rem;overflow-x:auto;font-size:.8rem}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; floats to 4 significant digits, text escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


SUMMARY_HEADER = [
    "run",
    "status",
    "epochs",
    "best val top-1 %",
    "best epoch",
    "final val top-1 %",
    "params",
    "train+eval s",
]


def summary_rows(runs: Sequence[RunRecord]) -> list[list[Any]]:
    """One row per run: name, status, epochs, best val top-1 (epoch), final val top-1, time."""
    rows = []
    for run in runs:
        best = run.best
        final = run.metrics[-1] if run.metrics else {}
        rows.append(
            [
                run.name,
                run.status,
                len(run.metrics),
                best["val_top1"] if best else "-",
                best["epoch"] if best else "-",
                final.get("val_top1", "-"),
                run.summary.get("params", "-"),
                run.total_time,
            ]
        )
    return rows


def image_html(path: Path) -> str:
    """A PNG embedded as base64, so the page stands alone."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(runs: Sequence[RunRecord], images: Sequence[Path], title: str) -> str:
    """The report page: summary table, curves, per-run epoch tables and configs."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Runs</h2>",
        table_html(SUMMARY_HEADER, summary_rows(runs)),
    ]
    if images:
        parts.append("<h2>Curves</h2>")
        parts += [image_html(p) for p in images]
    for run in runs:
        parts.append(f"<h2>{html.escape(run.name)}</h2>")
        parts.append(
            f"<p>folder <code>{html.escape(str(run.path))}</code>, status "
            f"<span class='status-{html.escape(run.status)}'>{html.escape(run.status)}</span></p>"
        )
        keys = [
            k
            for k in (
                "epoch",
                "train_loss",
                "train_top1",
                "val_loss",
                "val_top1",
                "val_top5",
                "lr",
                "epoch_time",
            )
            if any(k in m for m in run.metrics)
        ]
        parts.append(table_html(keys, [[m.get(k, "-") for k in keys] for m in run.metrics]))
        parts.append(
            "<details><summary>config.yaml</summary><pre>"
            + html.escape(yaml.safe_dump(run.config, sort_keys=False))
            + "</pre></details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
