"""Latency benchmark of an exported model on a runtime, repeated so that noise shows.

One repeat is a whole benchmark: warm-up, ``runs`` timed inferences at batch 1
(mean, median, p90, min, stdev), the compute latency from the runtime's profiler where
it has one, and the throughput at a larger batch. Three repeats run in one process; the
headline latency is the median of the repeat medians and the spread (min..max of the
repeat medians) says how far to trust a difference.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetrain.compress.runtime import RUNTIMES, Measurement, Runtime
from edgetrain.errors import EdgetrainError

__all__ = ["BenchmarkResult", "RepeatStats", "benchmark", "runtimes_for"]


@dataclass(frozen=True)
class RepeatStats:
    """Statistics of one repeat (milliseconds; throughput in samples per second)."""

    mean_ms: float
    median_ms: float
    p90_ms: float
    min_ms: float
    stdev_ms: float
    compute_ms: float | None = None
    throughput: float | None = None

    @classmethod
    def of(cls, m: Measurement, throughput: float | None = None) -> RepeatStats:
        """Statistics of a measurement's latencies (compute: the median per-run time)."""
        lat = m.latencies_ms
        return cls(
            mean_ms=statistics.fmean(lat),
            median_ms=statistics.median(lat),
            p90_ms=float(np.percentile(lat, 90)),
            min_ms=min(lat),
            stdev_ms=statistics.stdev(lat) if len(lat) > 1 else 0.0,
            compute_ms=statistics.median(m.compute_ms) if m.compute_ms else None,
            throughput=throughput,
        )


@dataclass(frozen=True)
class BenchmarkResult:
    """A benchmark's repeats and the headline numbers drawn from them.

    Headline values are medians over repeats (``latency_ms`` is the median of the
    repeat medians); ``spread_ms`` is the (min, max) of the repeat medians.
    """

    path: Path
    runtime: str
    threads: int
    batch: int
    warmup: int
    runs: int
    throughput_batch: int | None
    file_bytes: int
    repeats: list[RepeatStats]
    notes: list[str] = field(default_factory=list)
    measured_by: str | None = None  # the process that measured it, when not this one

    def _median(self, key: str) -> float | None:
        values = [getattr(r, key) for r in self.repeats if getattr(r, key) is not None]
        return statistics.median(values) if values else None

    @property
    def latency_ms(self) -> float:
        """Median of the repeat medians."""
        return statistics.median(r.median_ms for r in self.repeats)

    @property
    def spread_ms(self) -> tuple[float, float]:
        """Smallest and largest repeat median."""
        medians = [r.median_ms for r in self.repeats]
        return min(medians), max(medians)

    @property
    def compute_ms(self) -> float | None:
        """Median over repeats of the median per-run kernel time (None: not measured)."""
        return self._median("compute_ms")

    @property
    def throughput(self) -> float | None:
        """Median over repeats of samples per second at ``throughput_batch``."""
        return self._median("throughput")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: headline numbers, settings, every repeat and the notes."""
        low, high = self.spread_ms
        return {
            "path": str(self.path),
            "runtime": self.runtime,
            "threads": self.threads,
            "batch": self.batch,
            "warmup": self.warmup,
            "runs": self.runs,
            "throughput_batch": self.throughput_batch,
            "file_bytes": self.file_bytes,
            "latency_ms": self.latency_ms,
            "spread_ms": [low, high],
            "mean_ms": self._median("mean_ms"),
            "p90_ms": self._median("p90_ms"),
            "min_ms": self._median("min_ms"),
            "stdev_ms": self._median("stdev_ms"),
            "compute_ms": self.compute_ms,
            "throughput": self.throughput,
            "repeats": [vars(r) for r in self.repeats],
            "notes": list(self.notes),
            **({} if self.measured_by is None else {"measured_by": self.measured_by}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        """The result :meth:`to_dict` wrote (a measurement made by another process)."""
        return cls(
            path=Path(data["path"]),
            runtime=data["runtime"],
            threads=data["threads"],
            batch=data["batch"],
            warmup=data["warmup"],
            runs=data["runs"],
            throughput_batch=data.get("throughput_batch"),
            file_bytes=data["file_bytes"],
            repeats=[RepeatStats(**r) for r in data["repeats"]],
            notes=list(data.get("notes", [])),
            measured_by=data.get("measured_by"),
        )

    def summary(self) -> str:
        """One line: latency (spread), compute latency, throughput, file size."""
        low, high = self.spread_ms
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        parts = [
            f"{self.path.name} on {self.runtime} ({threads}): {self.latency_ms:.3f} ms at batch "
            f"{self.batch} (median of {len(self.repeats)} repeats, spread {low:.3f}..{high:.3f})"
        ]
        if self.compute_ms is not None:
            parts.append(f"compute {self.compute_ms:.3f} ms")
        if self.throughput is not None:
            parts.append(f"{self.throughput:,.0f} samples/s at batch {self.throughput_batch}")
        parts.append(f"{self.file_bytes / 1024:,.1f} KiB")
        return ", ".join(parts)


def benchmark(
    path: str | Path,
    runtime: str | Runtime = "onnxruntime",
    threads: int = 1,
    warmup: int = 10,
    runs: int = 100,
    repeats: int = 3,
    batch: int = 1,
    throughput_batch: int | None = 32,
    profile: bool = True,
    runtime_options: Mapping[str, Any] | None = None,
) -> BenchmarkResult:
    """Measure a model's latency, compute latency and throughput on a runtime.

    Args:
        path: the model file (``.onnx`` for ``onnxruntime``, ``.onnx`` or ``.xml`` for
            ``openvino``, ``.pte`` for ``executorch``, anything for ``command``).
        runtime: a registered runtime name (``onnxruntime``, ``openvino``,
            ``executorch``, ``command``) or a Runtime.
        threads: intra-op threads (1 by default, as on one edge core).
        warmup: untimed runs before the timed ones, in every repeat.
        runs: timed runs per repeat.
        repeats: whole benchmarks run one after another in this process.
        batch: batch size of the latency runs.
        throughput_batch: batch size of the throughput runs (``max(3, runs // 10)`` runs
            after ``min(warmup, 3)`` warm-ups); None skips them. A model with a fixed
            batch dimension, or a command without ``{batch}``, skips them with a note.
        profile: measure compute latency with the runtime's profiler, where it has one.
        runtime_options: options of a runtime given by name, e.g.
            ``{"command": ["prog", "{model}"]}`` for ``command``, ``{"precision":
            "fp16"}`` for ``openvino``, ``{"provider": "cuda"}`` for ``onnxruntime``.

    Example:
        >>> r = benchmark("model.onnx", runs=50)  # doctest: +SKIP
        >>> print(r.summary())  # doctest: +SKIP
    """
    for name, value, least in (
        ("threads", threads, 1),
        ("warmup", warmup, 0),
        ("runs", runs, 1),
        ("repeats", repeats, 1),
        ("batch", batch, 1),
    ):
        if not isinstance(value, int) or value < least:
            raise EdgetrainError(f"{name}={value!r} must be an integer >= {least}")
    if throughput_batch is not None and throughput_batch < 1:
        raise EdgetrainError(f"throughput_batch={throughput_batch} must be >= 1 (or None to skip)")
    path = Path(path)
    if not path.is_file():
        raise EdgetrainError(f"model file '{path}' not found; check the path")
    if isinstance(runtime, str):
        rt = RUNTIMES.create(runtime, **dict(runtime_options or {}))
    elif runtime_options:
        raise EdgetrainError("runtime_options go with a runtime name, not a Runtime instance")
    else:
        rt = runtime
    rt.check_file(path)
    note = rt.batch_note(path, batch)
    if note is not None:
        raise EdgetrainError(f"cannot run '{path}' at batch {batch}: {note}")
    notes: list[str] = []
    if throughput_batch is not None:
        skip = rt.batch_note(path, throughput_batch)
        if skip is not None:
            notes.append(f"throughput skipped: {skip}")
            throughput_batch = None

    stats = []
    for _ in range(repeats):
        m = rt.measure(
            path, batch=batch, warmup=warmup, runs=runs, threads=threads, profile=profile
        )
        throughput = None
        if throughput_batch is not None:
            t = rt.measure(
                path,
                batch=throughput_batch,
                warmup=min(warmup, 3),
                runs=max(3, runs // 10),
                threads=threads,
                profile=False,
            )
            throughput = throughput_batch * 1e3 / statistics.median(t.latencies_ms)
        stats.append(RepeatStats.of(m, throughput))
    if profile and stats[0].compute_ms is None:
        notes.append(f"compute latency not measured: runtime '{rt.name}' reports no kernel times")
    compute = [s.compute_ms for s in stats if s.compute_ms is not None]
    latency = statistics.median(s.median_ms for s in stats)
    if compute and statistics.median(compute) > latency:
        notes.append(
            f"compute {statistics.median(compute):.3f} ms (kernel time of separate profiled "
            f"runs, which the profiler slows and where parallel kernels add up) is above the "
            f"{latency:.3f} ms latency; take the latency as the time a call takes"
        )
    return BenchmarkResult(
        path=path,
        runtime=rt.name,
        threads=threads,
        batch=batch,
        warmup=warmup,
        runs=runs,
        throughput_batch=throughput_batch,
        file_bytes=rt.model_bytes(path),
        repeats=stats,
        notes=notes,
    )


def runtimes_for(path: str | Path) -> tuple[list[str], list[str]]:
    """The installed in-process runtimes that read ``path``, and one line per other
    runtime saying why it is left out (not installed: its install line; another file
    format: the export that writes it). The ``command`` runtime needs a command and is
    never chosen here.
    """
    path = Path(path)
    usable: list[str] = []
    skipped: list[str] = []
    for entry in RUNTIMES:
        cls = entry.fn
        if entry.name == "command":
            continue
        missing = cls.missing()
        if missing is not None:
            skipped.append(f"{entry.name}: not installed; {missing}")
        elif cls.suffixes and not str(path).lower().endswith(cls.suffixes):
            skipped.append(
                f"{entry.name}: reads {' or '.join(cls.suffixes)}, not {path.suffix or path.name}; "
                f"bench the run directory, or export with --format {cls.export_format}"
            )
        else:
            usable.append(entry.name)
    return usable, skipped
