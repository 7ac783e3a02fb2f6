"""One candidate of a sweep, measured end to end.

A candidate is a compression recipe with the trial's parameters set. It is applied to
the trained model (L1 filter pruning with physical removal), evaluated, fine-tuned,
exported, quantized when the recipe says so, evaluated again with ONNX Runtime and
benchmarked on the sweep's runtime. :func:`evaluate_candidate` returns every number a
sweep records (see :data:`edgetrain.search.config.METRICS`); the same function measures
the unpruned baseline and the hand-made reference recipe, so all three are comparable.

Two parameter sets that give the same architecture and the same fine-tuning (for
example sparsities that round to the same filter counts) have the same
:func:`config_key`; the sweep reuses the first one's result instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgetrain.compress.apply import CompressReport
from edgetrain.compress.benchmark import BenchmarkResult
from edgetrain.compress.deploy import DeployedFile
from edgetrain.compress.pipeline import Compression
from edgetrain.compress.recipe import Recipe, load_recipe
from edgetrain.compress.runtime import RUNTIMES, Runtime
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.runs import TrainedRun, load_trained_run
from edgetrain.search.bench_queue import BenchQueue
from edgetrain.search.config import SweepConfig
from edgetrain.search.pruners import TrialReporter

__all__ = [
    "Candidate",
    "CandidatePruned",
    "SweepContext",
    "TrialFailed",
    "config_key",
    "evaluate_candidate",
]


class TrialFailed(EdgetrainError):
    """A candidate whose training diverged or whose metrics are not finite numbers."""


@dataclass
class SweepContext:
    """What every trial of a sweep shares: the config, the recipe, the trained run and
    the folder of the trials' files."""

    config: SweepConfig
    recipe: Recipe
    run: TrainedRun
    folder: Path
    reference: Recipe | None = None
    bench: BenchQueue | None = None  # set when a bench worker measures the latencies

    @classmethod
    def prepare(cls, config: SweepConfig, base: Path | None, folder: str | Path) -> SweepContext:
        """Load the recipe, the trained model and the reference recipe; check that every
        parameter names a key of the recipe.

        Raises:
            ConfigError: a missing run or recipe, a data set other than the run's, or a
                parameter that does not fit the recipe.
        """
        recipe = config.load_recipe(base)
        if recipe.number_format is not None:
            raise ConfigError(
                f"recipe: number_format '{recipe.number_format.method}' models cannot be "
                "exported to ONNX, and a sweep measures ONNX Runtime latency; remove the "
                "number_format section"
            )
        config.check(recipe)
        model_path = Path(config.model)
        if base is not None and not model_path.is_absolute() and (base / model_path).exists():
            model_path = base / model_path
        run = load_trained_run(model_path)
        if config.data is not None and config.data != run.config.data.name:
            raise ConfigError(
                f"data: '{config.data}' but the model in '{config.model}' was trained on "
                f"'{run.config.data.name}'; remove 'data' or point 'model' at a run on it"
            )
        recipe.check(run.model)
        reference = None
        if config.reference is not None:
            ref_source = config.reference
            if base is not None and (base / ref_source).exists():
                ref_source = str(base / ref_source)
            reference = load_recipe(ref_source)
            reference.check(run.model)
        return cls(config, recipe, run, Path(folder), reference)


@dataclass
class Candidate:
    """A measured candidate: the metrics a trial records and its compression report."""

    metrics: dict[str, Any]
    report: CompressReport
    key: str
    duplicate_of: int | None = None


def config_key(report: CompressReport, recipe: Recipe) -> str:
    """A digest of what decides a candidate's result: the filters kept per layer and
    every recipe section other than the pruners (fine-tuning, quantization, export)."""
    recipe_tree = {k: v for k, v in recipe.to_dict().items() if k != "pruners"}
    payload = json.dumps(
        {"filters": report.filters_after, "recipe": recipe_tree}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class CandidatePruned(Exception):
    """The sweep's trial pruner stopped the candidate's fine-tuning; ``metrics`` holds
    its last figures (recorded on the pruned trial)."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        super().__init__(f"pruned after epoch {metrics.get('pruned_at_epoch')}")
        self.metrics = metrics


def _finite(value: float | None, what: str) -> None:
    if value is None or not math.isfinite(value):
        raise TrialFailed(f"{what} is {value}: training diverged; lower finetune.lr")


def evaluate_candidate(
    ctx: SweepContext,
    recipe: Recipe,
    out: str | Path,
    *,
    baseline: dict[str, Any] | None = None,
    cached: Callable[[str], tuple[int, dict[str, Any]] | None] | None = None,
    finetune_: bool = True,
    reporter: TrialReporter | None = None,
) -> Candidate:
    """Compress, fine-tune, export, quantize, evaluate and benchmark one recipe.

    Args:
        ctx: the sweep's shared context.
        recipe: the candidate recipe (the sweep's recipe with the trial's parameters).
        out: folder for the candidate's files (``recipe.yaml``, ONNX files, ``model.pt``
            when the sweep keeps models).
        baseline: the unpruned model's metrics, for ``top1_drop`` and ``latency_ratio``.
        cached: looks a :func:`config_key` up among finished trials and returns
            ``(trial number, metrics)`` to reuse, or None.
        finetune_: run the recipe's fine-tuning (False for the baseline).
        reporter: reports each fine-tuning epoch to the Optuna trial and stops the
            fine-tuning when the sweep's trial pruner says so.

    Raises:
        TrialFailed: fine-tuning diverged.
        CandidatePruned: the trial pruner stopped the fine-tuning (the candidate is
            not exported or measured; its last figures are in the exception).
    """
    out = Path(out)
    job = Compression(ctx.run, recipe)
    report = job.report
    key = config_key(report, job.recipe)
    if cached is not None:
        hit = cached(key)
        if hit is not None:
            number, metrics = hit
            _write_record(out, recipe, {**metrics, "duplicate_of": number})
            return Candidate(dict(metrics), report, key, duplicate_of=number)
    pruned = job.evaluate(source=False)
    report.top1_before = None if baseline is None else baseline.get("top1_fp32")
    metrics: dict[str, Any] = {
        "top1_pruned": pruned["top1"],
        "top5_pruned": pruned.get("top5"),
        "loss_pruned": pruned["loss"],
        "ruined": report.ruined,
        "macs": report.macs_after,
        "params": report.params_after,
        "macs_ratio": report.macs_ratio,
        "params_ratio": report.params_ratio,
        "filters_kept": {k: list(v) for k, v in report.filters_kept.items()},
        "finetune_epochs": 0,
    }
    callbacks = [] if reporter is None else [reporter]
    if finetune_ and job.finetune(callbacks=callbacks):
        assert job.tuned is not None and recipe.finetune is not None
        metrics["finetune_epochs"] = len(job.tuned.history)
        if reporter is not None and reporter.pruned_at is not None:  # diverged or not
            metrics.update(
                pruned_at_epoch=reporter.pruned_at,
                top1_at_pruning=reporter.last.get("top1"),
                loss_at_pruning=reporter.last.get("loss"),
            )
            _write_record(out, recipe, metrics)
            raise CandidatePruned(metrics)
        last = job.tuned.history[-1] if job.tuned.history else {}
        _finite(last.get("train_loss"), "the fine-tuning loss")
    _write_record(out, recipe, None)
    files = _deploy_and_measure(ctx, job, out)
    for f in files:
        tag = "fp32" if f.name == "fp32" else "int8"
        assert f.bench is not None
        bench = f.bench.to_dict()
        metrics.update(
            {
                f"top1_{tag}": f.metrics["top1"],
                f"top5_{tag}": f.metrics.get("top5"),
                f"loss_{tag}": f.metrics["loss"],
                f"latency_{tag}_ms": f.bench.latency_ms,
                f"size_{tag}_bytes": f.size_bytes,
            }
        )
        if f is files[-1]:
            _finite(f.metrics["loss"], "the test loss")
            metrics.update(
                {
                    "deployed": f.name,
                    "top1": f.metrics["top1"],
                    "top5": f.metrics.get("top5"),
                    "loss": f.metrics["loss"],
                    "latency_ms": f.bench.latency_ms,
                    "latency_spread_ms": bench["spread_ms"],
                    "latency_p90_ms": bench["p90_ms"],
                    "compute_ms": f.bench.compute_ms,
                    "throughput": f.bench.throughput,
                    "size_bytes": f.size_bytes,
                }
            )
    if ctx.bench is not None:
        by = {str(f.bench.measured_by) for f in files if f.bench is not None}
        metrics["measured_by"] = ", ".join(sorted(by))
    if baseline is not None:
        metrics["top1_drop"] = baseline["top1"] - metrics["top1"]
        metrics["latency_ratio"] = metrics["latency_ms"] / baseline["latency_ms"]
    if ctx.config.keep_models:
        job.save(out / "model.pt")
    else:
        for f in files:
            f.path.unlink(missing_ok=True)
    _write_record(out, recipe, metrics)
    return Candidate(metrics, report, key)


def _deploy_and_measure(ctx: SweepContext, job: Compression, out: Path) -> list[DeployedFile]:
    """Deploy the candidate and time its files: here, or through the bench worker's
    queue (the files are evaluated here, on the sweep's runtime when it is installed
    here and runs in-process, else on ONNX Runtime; a runtime with a file format of its
    own, ExecuTorch's, must be installed here to write its files)."""
    settings = ctx.config.runtime_settings()
    if ctx.bench is None:
        return job.deploy(out, settings)
    spec = ctx.config.runtime
    local = RUNTIMES.entry(spec.name).fn
    here = local.missing() is None and local.predictor is not Runtime.predictor
    own_format = local.export_format not in ("onnx", "openvino")
    evaluation = (
        {"runtime": spec.name, "runtime_options": spec.options or None}
        if here or own_format  # own format: deploy names the missing package
        else {"runtime": "onnxruntime"}
    )
    files = job.deploy(out, evaluation, measure_=False)
    wanted = {k: settings[k] for k in ("threads", "warmup", "runs", "repeats")}
    wanted["throughput_batch"] = settings["throughput_batch"]
    for f in files:
        request = ctx.bench.submit(f"{out.name}/{f.path.name}", [f.path], wanted)
        data = ctx.bench.wait(request, spec.wait_s)
        f.bench = BenchmarkResult.from_dict({**data, "path": str(f.path)})
    return files


def _write_record(out: Path, recipe: Recipe, metrics: dict[str, Any] | None) -> None:
    """``recipe.yaml`` first (a fresh folder); ``metrics.json`` once measured."""
    if metrics is None or not out.exists():
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
