"""Readers of what a benchmark program prints or writes, for the ``command`` runtime.

``OUTPUT_ADAPTERS`` maps an adapter name (``-o output=NAME``) to a reader called as
``fn(stdout, report_dir, shown) -> (latencies_ms, compute_ms or None)``:

- ``json`` (default): one JSON object on stdout, alone or as its last line, with
  ``latency_ms`` (a number or a list of per-run latencies) and optionally ``compute_ms``.
- ``benchmark_app``: OpenVINO's ``benchmark_app`` run with ``-report_folder
  {report_dir} -json_stats``: the median latency of ``benchmark_report.json``. That file
  rounds to 10 microseconds, so the ``Median:`` line benchmark_app prints (in us or ms)
  is taken instead when the output has it.

An adapter whose metadata says ``report_dir=True`` needs the ``{report_dir}``
placeholder in the command: a fresh folder per call, removed afterwards.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from edgetrain.errors import EdgetrainError
from edgetrain.registry import Registry

__all__ = ["OUTPUT_ADAPTERS", "shorten"]

OUTPUT_ADAPTERS: Registry[tuple[list[float], list[float] | None]] = Registry(
    "command output adapter"
)

_JSON_EXAMPLE = 'e.g. {"latency_ms": 1.5} or {"latency_ms": [1.5, 1.6]}'
_MEDIAN = re.compile(r"Median:\s*([0-9.]+)\s*(us|ms)\b")


def shorten(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut to ``limit`` characters with ``...``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@OUTPUT_ADAPTERS.register("json", report_dir=False)
def _json_line(stdout: str, report_dir: Path | None, shown: str) -> tuple[list[float], Any]:
    """A JSON object with ``latency_ms`` (and optionally ``compute_ms``) on stdout."""
    text = stdout.strip()
    lines = text.splitlines()
    obj: Any = None
    for candidate in (text, lines[-1] if lines else ""):
        try:
            obj = json.loads(candidate)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(obj, dict) or "latency_ms" not in obj:
        got = f"last line: {shorten(lines[-1], 60)!r}" if lines else "it printed nothing"
        raise EdgetrainError(
            f"command runtime: '{shown}' printed no JSON object with 'latency_ms' ({got}); "
            f"make it print {_JSON_EXAMPLE}"
        )
    latencies = _milliseconds(obj["latency_ms"], "latency_ms", shown)
    compute = obj.get("compute_ms")
    return latencies, None if compute is None else _milliseconds(compute, "compute_ms", shown)


@OUTPUT_ADAPTERS.register("benchmark_app", report_dir=True)
def _benchmark_app(stdout: str, report_dir: Path | None, shown: str) -> tuple[list[float], Any]:
    """OpenVINO benchmark_app's JSON report (``-report_folder {report_dir} -json_stats``)."""
    report = Path(report_dir or ".") / "benchmark_report.json"
    try:
        results = json.loads(report.read_text())["execution_results"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise EdgetrainError(
            f"command runtime: '{shown}' wrote no benchmark_app report; run benchmark_app "
            "with -report_type no_counters -report_folder {report_dir} -json_stats"
        ) from None
    if "error" in results:
        raise EdgetrainError(
            f"command runtime: benchmark_app failed: {shorten(str(results['error']), 160)}"
        )
    median = _MEDIAN.search(stdout)
    if median is not None:
        value = float(median.group(1)) / (1e3 if median.group(2) == "us" else 1.0)
    else:
        value = results.get("latency (ms)")
    try:
        latency = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        latency = math.nan
    return _milliseconds(latency, "latency (ms)", shown), None


def _milliseconds(value: Any, key: str, shown: str) -> list[float]:
    values = value if isinstance(value, list) else [value]
    ok = bool(values) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    )
    if not ok:
        raise EdgetrainError(
            f"command runtime: '{shown}' printed {key}={shorten(json.dumps(value), 60)}; "
            f"it must be a positive number or a non-empty list of them, {_JSON_EXAMPLE}"
        )
    return [float(v) for v in values]
