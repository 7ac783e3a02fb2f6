"""Compression: recipes, L1 filter pruning with physical removal, fine-tuning, sensitivity,
int8 quantization, progressive stochastic binarization (PSB), ONNX export and latency
benchmarks on a runtime.

Nothing here imports ONNX or ONNX Runtime until a function needs them (the
``[compress]`` extra); pruning needs Torch-Pruning (``[prune]``).

Example:
    >>> from edgetrain.compress import apply, load_recipe
    >>> from edgetrain.models import create
    >>> net, report = apply(create("resnet20"), "resnet20-l1")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

from edgetrain.compress.apply import CompressReport, PrunerReport, apply, is_ruined
from edgetrain.compress.benchmark import BenchmarkResult, RepeatStats, benchmark
from edgetrain.compress.deploy import DeployedFile, deploy, evaluate_onnx, measure
from edgetrain.compress.export import ExportResult, check_onnx, export_onnx
from edgetrain.compress.finetune import (
    FinetuneResult,
    finetune,
    finetune_config,
    save_compressed,
)
from edgetrain.compress.formats import EXPORT_FORMATS, ExportedFile, export_model
from edgetrain.compress.l1 import filters_to_remove, l1_filter
from edgetrain.compress.number_formats import NUMBER_FORMATS
from edgetrain.compress.pipeline import Compression, CompressionResult, run
from edgetrain.compress.pruning import PRUNERS, PrunedGroup
from edgetrain.compress.psb import (
    AttentionOutput,
    AttentionResult,
    OperationCost,
    PSBConfig,
    PSBConv2d,
    PSBLinear,
    PSBScore,
    SampleGrid,
    attention_forward,
    draw_sample_grid,
    evaluate_attention,
    finetune_psb,
    operation_cost,
    plot_sample_grid,
    psb_accuracy,
    psb_layers,
    sample_grid,
    set_samples,
    to_psb,
)
from edgetrain.compress.quantize import (
    QUANTIZE_METHODS,
    QuantizeResult,
    int8_speed_note,
    quantize_onnx,
)
from edgetrain.compress.recipe import Recipe, load_recipe
from edgetrain.compress.runtime import RUNTIMES, Measurement, Runtime
from edgetrain.compress.sensitivity import SensitivityRow, sensitivity
from edgetrain.compress.source import evaluate_model

__all__ = [
    "EXPORT_FORMATS",
    "NUMBER_FORMATS",
    "PRUNERS",
    "QUANTIZE_METHODS",
    "RUNTIMES",
    "AttentionOutput",
    "AttentionResult",
    "BenchmarkResult",
    "CompressReport",
    "Compression",
    "CompressionResult",
    "DeployedFile",
    "ExportedFile",
    "ExportResult",
    "FinetuneResult",
    "Measurement",
    "OperationCost",
    "PSBConfig",
    "PSBConv2d",
    "PSBLinear",
    "PSBScore",
    "PrunedGroup",
    "PrunerReport",
    "QuantizeResult",
    "Recipe",
    "RepeatStats",
    "Runtime",
    "SampleGrid",
    "SensitivityRow",
    "apply",
    "attention_forward",
    "benchmark",
    "check_onnx",
    "deploy",
    "draw_sample_grid",
    "evaluate_attention",
    "evaluate_model",
    "evaluate_onnx",
    "export_model",
    "export_onnx",
    "filters_to_remove",
    "finetune",
    "finetune_config",
    "finetune_psb",
    "int8_speed_note",
    "is_ruined",
    "l1_filter",
    "load_recipe",
    "operation_cost",
    "plot_sample_grid",
    "psb_accuracy",
    "psb_layers",
    "measure",
    "quantize_onnx",
    "run",
    "sample_grid",
    "save_compressed",
    "sensitivity",
    "set_samples",
    "to_psb",
]
