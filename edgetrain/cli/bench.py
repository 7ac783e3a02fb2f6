"""``edgetrain bench``: latency, compute latency and throughput of a model on a runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgetrain._atomic import atomic_writer, writable_folder
from edgetrain.cli._common import console, handle_errors, parse_options
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.compress.benchmark import BenchmarkResult

__all__ = ["bench_command"]


def _parse_command(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ConfigError(
            f'--command {text!r} must be a JSON list of strings, e.g. \'["prog", "{{model}}"]\''
        )
    return value


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(result: BenchmarkResult) -> Table:
    table = Table(title=f"{result.path.name} on {result.runtime} (ms at batch {result.batch})")
    tput = f"samples/s @{result.throughput_batch}" if result.throughput_batch else "samples/s"
    for h in ("repeat", "median", "mean", "p90", "min", "stdev", "compute", tput):
        table.add_column(h, justify="right")
    for i, r in enumerate(result.repeats, start=1):
        table.add_row(
            str(i),
            _ms(r.median_ms),
            _ms(r.mean_ms),
            _ms(r.p90_ms),
            _ms(r.min_ms),
            _ms(r.stdev_ms),
            _ms(r.compute_ms),
            "-" if r.throughput is None else f"{r.throughput:,.0f}",
        )
    d = result.to_dict()
    table.add_row(
        "[bold]median[/]",
        f"[bold]{_ms(result.latency_ms)}[/]",
        _ms(d["mean_ms"]),
        _ms(d["p90_ms"]),
        _ms(d["min_ms"]),
        _ms(d["stdev_ms"]),
        _ms(result.compute_ms),
        "-" if result.throughput is None else f"{result.throughput:,.0f}",
    )
    return table


@handle_errors
def bench_command(
    model: Path = typer.Argument(..., help="Model file (.onnx for onnxruntime)."),
    threads: int = typer.Option(1, min=1, help="Intra-op threads (1: one edge core)."),
    runs: int = typer.Option(100, min=1, help="Timed runs per repeat."),
    repeats: int = typer.Option(3, min=1, help="Whole benchmarks run one after another."),
    warmup: int = typer.Option(10, min=0, help="Untimed runs before the timed ones."),
    batch: int = typer.Option(
        32, min=0, help="Batch of the throughput runs (0 skips them); latency is at batch 1."
    ),
    runtime: str = typer.Option(
        None,
        help="A registered runtime (onnxruntime, command); default onnxruntime, or command "
        "when --command is given.",
    ),
    option: list[str] = typer.Option(
        None, "--option", "-o", help="A runtime option key=value (repeatable)."
    ),
    command: str = typer.Option(
        None,
        help='Command runtime: a JSON argument list run without a shell, e.g. \'["adb", "shell", '
        '"bench", "{model}"]\'; it prints {"latency_ms": ...}. Short for -o command=[...].',
    ),
    timeout: float = typer.Option(
        None, min=1.0, help="Seconds one command call may take (-o timeout_s=...; 600)."
    ),
    profile: bool = typer.Option(True, help="Measure compute latency with ORT's profiler."),
    json_out: Path = typer.Option(None, "--json", help="Also write the results to this file."),
    ops: bool = typer.Option(
        False, "--ops", help="Also show kernel time per operator type (ONNX Runtime's profiler)."
    ),
) -> None:
    """Benchmark a model: latency at batch 1 (median, mean, p90, min, stdev), compute
    latency (ORT profiler kernel time), throughput and file size; 3 repeats in one process.

    Example: edgetrain bench model.onnx --threads 1 --runs 100 --json bench.json
    """
    from edgetrain.compress.benchmark import benchmark
    from edgetrain.compress.runtime import RUNTIMES

    runtime = runtime or ("command" if command else "onnxruntime")
    if json_out is not None:  # before the measurement, not after it
        writable_folder(json_out.parent, "the folder of --json")
    options = parse_options(option, "--option")
    if command is not None:
        options["command"] = _parse_command(command)
    if timeout is not None:
        options["timeout_s"] = timeout
    rt = RUNTIMES.create(runtime, **options)  # unknown options name the valid ones
    if ops and not rt.times_ops:
        rt.op_times(model)  # the one-line refusal, before any benchmarking
    result = benchmark(
        model,
        runtime=rt,
        threads=threads,
        warmup=warmup,
        runs=runs,
        repeats=repeats,
        throughput_batch=batch or None,
        profile=profile,
    )
    console.print(_table(result))
    console.print(result.summary(), highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if ops:
        times = rt.op_times(model, threads=threads, warmup=warmup, runs=runs)
        total = sum(times.values()) or 1.0
        table = Table(title="kernel time per operator type (batch 1)")
        for h in ("operator", "ms per run", "share"):
            table.add_column(h, justify="left" if h == "operator" else "right")
        for op, ms in times.items():
            table.add_row(op, f"{ms:.4f}", f"{100 * ms / total:.1f}%")
        console.print(table)
    if json_out is not None:
        with atomic_writer(json_out, "w") as f:
            f.write(json.dumps(result.to_dict(), indent=2) + "\n")
