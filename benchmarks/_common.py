"""Helpers shared by the benchmark scripts: machine description, result files, tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"

# The zoo networks the cost-model benchmarks cover, edge networks included.
COST_ZOO = [
    "vgg_small",
    "resnet8",
    "resnet20",
    "kws_cnn",
    "ds_cnn",
    "fcn1d",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "vit_tiny",
]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the machine description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median of the pairwise ratios a[i] / b[i] (pairs measured side by side)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def print_table(
    title: str, header: list[str], rows: list[list[Any]], width: int | None = None
) -> None:
    """A rich table (floats with 3 decimals); ``width``: console columns (default: auto)."""
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row])
    Console(width=width).print(table)
