"""``edgetrain bench``: latency, compute latency and throughput of a model on a runtime."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from edgetrain._atomic import atomic_writer, writable_folder
from edgetrain.cli._common import console, handle_errors, parse_options
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.compress.benchmark import BenchmarkResult
    from edgetrain.compress.runtime import Runtime

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


def _compare_table(results: list[BenchmarkResult]) -> Table:
    first = results[0]
    table = Table(title=f"one model on {len(results)} runtimes (ms at batch {first.batch})")
    tput = f"samples/s @{first.throughput_batch}" if first.throughput_batch else "samples/s"
    for h in ("runtime", "file", "latency", "spread", "compute", tput, "KiB", "x first"):
        table.add_column(h, justify="left" if h in ("runtime", "file") else "right")
    for r in results:
        low, high = r.spread_ms
        table.add_row(
            r.runtime,
            r.path.name,
            _ms(r.latency_ms),
            f"{low:.3f}..{high:.3f}",
            _ms(r.compute_ms),
            "-" if r.throughput is None else f"{r.throughput:,.0f}",
            f"{r.file_bytes / 1024:,.1f}",
            f"{r.latency_ms / first.latency_ms:.2f}",
        )
    return table


def _runtime_for(model: Path) -> str:
    """The runtime that reads this file: OpenVINO for an IR, ExecuTorch for a program,
    ONNX Runtime otherwise."""
    from edgetrain.compress.runtime import RUNTIMES

    suffix = model.suffix.lower()
    for entry in RUNTIMES:
        reads = entry.fn.suffixes
        if suffix in reads and ".onnx" not in reads:  # a format only this runtime reads
            return entry.name
    return "onnxruntime"


def _is_model_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() != ".pt"


@handle_errors
def bench_command(
    model: Path = typer.Argument(
        ...,
        help="Model file (.onnx, OpenVINO .xml, ExecuTorch .pte), or a run directory or "
        "checkpoint, exported for each runtime first.",
    ),
    threads: int = typer.Option(1, min=1, help="Intra-op threads (1: one edge core)."),
    runs: int = typer.Option(100, min=1, help="Timed runs per repeat."),
    repeats: int = typer.Option(3, min=1, help="Whole benchmarks run one after another."),
    warmup: int = typer.Option(10, min=0, help="Untimed runs before the timed ones."),
    batch: int = typer.Option(
        32, min=0, help="Batch of the throughput runs (0 skips them); latency is at batch 1."
    ),
    runtime: str = typer.Option(
        None,
        help="A registered runtime (onnxruntime, openvino, executorch, command) or 'all' "
        "(every installed one that can run the model, side by side); default: the one "
        "that reads the file (openvino for .xml, executorch for .pte, else onnxruntime), "
        "or command when --command is given.",
    ),
    option: list[str] = typer.Option(
        None,
        "--option",
        "-o",
        help="A runtime option key=value (repeatable), e.g. -o precision=fp16 (openvino), "
        "-o provider=cuda (onnxruntime).",
    ),
    command: str = typer.Option(
        None,
        help='Command runtime: a JSON argument list run without a shell, e.g. \'["adb", "shell", '
        '"bench", "{model}"]\'; it prints {"latency_ms": ...}. Short for -o command=[...].',
    ),
    timeout: float = typer.Option(
        None, min=1.0, help="Seconds one command call may take (-o timeout_s=...; 600)."
    ),
    profile: bool = typer.Option(
        True, help="Measure compute latency with the runtime's profiler (ORT, OpenVINO)."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the results to this file."),
    ops: bool = typer.Option(
        False, "--ops", help="Also show kernel time per operator type (the runtime's profiler)."
    ),
    layers: bool = typer.Option(
        False,
        "--layers",
        help="With --ops: per layer (each executed node, with its type) instead of per type.",
    ),
) -> None:
    """Benchmark a model: latency at batch 1 (median, mean, p90, min, stdev), compute
    latency (profiler kernel time), throughput and file size; 3 repeats in one process.
    With --runtime all, the same model on every installed runtime, side by side.

    Example: edgetrain bench model.onnx --runtime all --threads 1 --json bench.json
    """
    from edgetrain.compress.benchmark import runtimes_for
    from edgetrain.compress.runtime import RUNTIMES

    runtime = runtime or ("command" if command else _runtime_for(model))
    if json_out is not None:  # before the measurement, not after it
        writable_folder(json_out.parent, "the folder of --json")
    options = parse_options(option, "--option")
    if command is not None:
        options["command"] = _parse_command(command)
    if timeout is not None:
        options["timeout_s"] = timeout
    if layers and not ops:
        raise ConfigError("--layers goes with --ops (kernel time per layer)")
    if runtime == "all":
        if options:
            raise ConfigError(
                "--runtime all runs each runtime with its defaults; give runtime options "
                "with one --runtime NAME"
            )
        if ops:
            raise ConfigError("--ops shows one runtime's operators; use it with one --runtime")
        if _is_model_file(model):
            names, skipped = runtimes_for(model)
        else:
            names = [e.name for e in RUNTIMES if e.name != "command" and e.fn.missing() is None]
            skipped = [
                f"{e.name}: not installed; {e.fn.missing()}"
                for e in RUNTIMES
                if e.name != "command" and e.fn.missing() is not None
            ]
        if not names:
            raise ConfigError(f"no installed runtime can run '{model}': {'; '.join(skipped)}")
        names.sort(key=lambda n: n != "onnxruntime")  # the default runtime first
        runtimes = [RUNTIMES.create(n) for n in names]
    else:
        runtimes = [RUNTIMES.create(runtime, **options)]  # unknown options name the valid ones
        skipped = []
    settings = {
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "repeats": repeats,
        "throughput_batch": batch or None,
        "profile": profile,
    }
    with tempfile.TemporaryDirectory(prefix="edgetrain-bench-") as tmp:
        files = _model_files(model, runtimes, Path(tmp))
        if ops and not runtimes[0].times_ops:
            runtimes[0].op_times(files[0])  # the one-line refusal, before any benchmarking
        results = [_bench_one(f, rt, settings) for f, rt in zip(files, runtimes, strict=True)]
        if ops:
            _print_ops(runtimes[0], files[0], threads, warmup, runs, "layer" if layers else "type")
    if len(results) > 1:
        console.print(_compare_table(results))
    for line in skipped:
        console.print(f"skipped {line}", highlight=False, soft_wrap=True)
    if json_out is not None:
        data = [r.to_dict() for r in results]
        with atomic_writer(json_out, "w") as f:
            f.write(json.dumps(data if runtime == "all" else data[0], indent=2) + "\n")


def _model_files(model: Path, runtimes: list[Runtime], tmp: Path) -> list[Path]:
    """The file each runtime measures: ``model`` itself, or the trained model (a run
    directory or checkpoint) exported in each runtime's format into ``tmp``."""
    if _is_model_file(model) or not model.exists():
        return [model] * len(runtimes)  # a missing file is refused by the benchmark
    from edgetrain.compress.formats import EXPORT_FORMATS, export_model
    from edgetrain.runs import load_trained_model

    net = load_trained_model(model)
    written: dict[str, Path] = {}
    files = []
    for rt in runtimes:
        fmt = rt.export_format
        if fmt not in written:
            out = tmp / f"model{EXPORT_FORMATS.entry(fmt).meta['suffix']}"
            written[fmt] = export_model(net, out, fmt).path
            console.print(f"exported {model} for {rt.name}: {out.name}", highlight=False)
        files.append(written[fmt])
    return files


def _bench_one(path: Path, rt: Runtime, settings: dict[str, Any]) -> BenchmarkResult:
    from edgetrain.compress.benchmark import benchmark

    result = benchmark(path, runtime=rt, **settings)
    console.print(_table(result))
    console.print(result.summary(), highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    return result


def _print_ops(
    rt: Runtime, path: Path, threads: int, warmup: int, runs: int, by: str = "type"
) -> None:
    times = rt.op_times(path, threads=threads, warmup=warmup, runs=runs, by=by)
    total = sum(times.values()) or 1.0
    what = "operator type" if by == "type" else "layer"
    table = Table(title=f"kernel time per {what} on {rt.name} (batch 1)")
    for h in (what, "ms per run", "share"):
        table.add_column(h, justify="left" if h == what else "right")
    for op, ms in times.items():
        table.add_row(op, f"{ms:.4f}", f"{100 * ms / total:.1f}%")
    console.print(table)
