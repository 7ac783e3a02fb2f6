"""From a compressed PyTorch model to measured deployment files.

:func:`deploy` exports the model to ONNX as the recipe's ``export`` section says, adds
the int8 (or fp16) model when the recipe has a ``quantize`` section, and evaluates each
file on the test set with the runtime that will run it (accuracy of what would really
run, not of the PyTorch model it came from): ONNX Runtime, OpenVINO, or, for a runtime
that reads another format (ExecuTorch's ``.pte``), the file written in that format.
:func:`measure` benchmarks each file on a runtime. The compression command, the search
and the compression benchmark all go through these two functions.

Example:
    >>> files = deploy(net, recipe, "out", run.test_data(), run.train_data())  # doctest: +SKIP
    >>> measure(files, runs=50)  # doctest: +SKIP
    >>> [(f.name, f.top1, f.latency_ms) for f in files]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain.compress.benchmark import BenchmarkResult, benchmark
from edgetrain.compress.export import export_onnx
from edgetrain.compress.quantize import quantize_onnx
from edgetrain.compress.recipe import ExportSpec, Recipe
from edgetrain.compress.runtime import RUNTIMES, Runtime
from edgetrain.engine.evaluate import evaluate
from edgetrain.errors import EdgetrainError

__all__ = ["DeployedFile", "deploy", "evaluate_onnx", "measure"]

FP32_FILE = "model.onnx"


@dataclass
class DeployedFile:
    """One deployable file with its accuracy and (after :func:`measure`) its latency.

    Attributes:
        name: ``fp32`` or the quantization method (``int8_static``, ``int8_dynamic``,
            ``fp16``).
        path: the model file (``.onnx``, or the runtime's own format).
        size_bytes: file size.
        metrics: test ``loss``, ``top1``, ``top5`` (percent) on the evaluating runtime.
        bench: the benchmark result, set by :func:`measure`.
    """

    name: str
    path: Path
    size_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)
    bench: BenchmarkResult | None = None

    @property
    def top1(self) -> float | None:
        return self.metrics.get("top1")

    @property
    def latency_ms(self) -> float | None:
        return None if self.bench is None else self.bench.latency_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            **{k: v for k, v in self.metrics.items() if k in ("loss", "top1", "top5")},
            **({} if self.bench is None else {"bench": self.bench.to_dict()}),
        }


class _PredictorModule(nn.Module):
    """A runtime's predictor behind the ``nn.Module`` call, so the engine's
    :func:`~edgetrain.engine.evaluate.evaluate` scores a deployed file like any model."""

    def __init__(self, predict: Any) -> None:
        super().__init__()
        self.predict = predict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(np.asarray(self.predict(array), dtype=np.float32))


def evaluate_onnx(
    path: str | Path,
    dataset: Dataset[Any],
    batch_size: int = 256,
    threads: int = 1,
    runtime: str | Runtime = "onnxruntime",
) -> dict[str, float]:
    """Test loss, top-1 and top-5 (percent) of a model file run by a runtime (ONNX
    Runtime by default; any runtime that hands outputs back).

    An ONNX model needs a symbolic batch dimension (``export_onnx`` writes one by
    default); an ExecuTorch program runs its fixed batch, chunk by chunk.
    """
    rt = RUNTIMES.create(runtime) if isinstance(runtime, str) else runtime
    module = _PredictorModule(rt.predictor(Path(path), threads=threads))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    info = getattr(dataset, "info", None)
    return evaluate(
        module,
        loader,
        nn.CrossEntropyLoss(),
        torch.device("cpu"),
        getattr(info, "num_classes", None),
    )


def _inputs(batches: Iterable[Any]) -> Iterable[Any]:
    for item in batches:
        yield item[0] if isinstance(item, (tuple, list)) else item


def deploy(
    model: nn.Module,
    recipe: Recipe,
    out: str | Path,
    test_data: Dataset[Any] | None = None,
    calibration_data: Dataset[Any] | None = None,
    *,
    calibration_batch_size: int = 32,
    threads: int = 1,
    runtime: str = "onnxruntime",
    runtime_options: Mapping[str, Any] | None = None,
) -> list[DeployedFile]:
    """Export ``model`` (and its int8/fp16 version when the recipe quantizes) into ``out``.

    Args:
        model: the compressed (and fine-tuned) network.
        recipe: its ``export`` section sets the opset (default 17 when absent); its
            ``quantize`` section adds an int8 file.
        out: folder of ``model.onnx`` and ``model.<method>.onnx``.
        test_data: evaluate each file with ONNX Runtime on it (None skips evaluation).
        calibration_data: inputs for ``int8_static`` calibration (the training split,
            without augmentation); the recipe's ``calibration_batches`` batches are used.
        calibration_batch_size: batch size of the calibration batches.
        threads: threads of the evaluating runtime.
        runtime: the runtime the files are for (and are evaluated on, when it hands
            outputs back; else ONNX Runtime). A runtime reading another format than ONNX
            gets the model in that format, unquantized.
        runtime_options: its options.

    Returns:
        The FP32 file first, then the quantized one.
    """
    out = Path(out)
    spec = recipe.export or ExportSpec()
    rt = RUNTIMES.create(runtime, **dict(runtime_options or {}))
    evaluator: Runtime = rt if rt.gives_outputs else RUNTIMES.create("onnxruntime")
    if rt.export_format not in ("onnx", "openvino"):  # OpenVINO reads the ONNX file
        return _deploy_other(model, recipe, out, rt, test_data, threads)
    exported = export_onnx(model, out / FP32_FILE, opset=spec.opset)
    files = [DeployedFile("fp32", exported.path, exported.file_bytes)]
    q = recipe.quantize
    if q is not None:
        batches = None
        if calibration_data is not None:
            loader = DataLoader(calibration_data, batch_size=calibration_batch_size)
            batches = _inputs(islice(loader, q.calibration_batches))
        result = quantize_onnx(
            exported.path,
            out / f"model.{q.method}.onnx",
            method=q.method,
            calibration_data=batches,
            calibration_batches=q.calibration_batches,
        )
        files.append(DeployedFile(q.method, result.path, result.int8_bytes))
    if test_data is not None:
        for f in files:
            f.metrics = evaluate_onnx(f.path, test_data, threads=threads, runtime=evaluator)
    return files


def _deploy_other(
    model: nn.Module,
    recipe: Recipe,
    out: Path,
    rt: Runtime,
    test_data: Dataset[Any] | None,
    threads: int,
) -> list[DeployedFile]:
    """The model in ``rt``'s own format (no quantization there), evaluated on ``rt``."""
    from edgetrain.compress.formats import EXPORT_FORMATS, export_model

    if recipe.quantize is not None:
        raise EdgetrainError(
            f"runtime '{rt.name}' runs {rt.export_format} files, which edgetrain does not "
            f"quantize; drop the recipe's quantize section or measure on onnxruntime/openvino"
        )
    suffix = EXPORT_FORMATS.entry(rt.export_format).meta["suffix"]
    exported = export_model(model, out / f"model{suffix}", rt.export_format, threads=threads)
    files = [DeployedFile("fp32", exported.path, exported.file_bytes)]
    if test_data is not None and rt.gives_outputs:
        files[0].metrics = evaluate_onnx(exported.path, test_data, threads=threads, runtime=rt)
    return files


def measure(
    files: Iterable[DeployedFile],
    runtime: str = "onnxruntime",
    runtime_options: Mapping[str, Any] | None = None,
    **settings: Any,
) -> list[DeployedFile]:
    """Benchmark each file on ``runtime`` (settings as :func:`~edgetrain.compress.benchmark`),
    one after another in this process, and store the result on the file."""
    files = list(files)
    for f in files:
        f.bench = benchmark(f.path, runtime=runtime, runtime_options=runtime_options, **settings)
    return files
