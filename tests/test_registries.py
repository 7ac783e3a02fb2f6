"""Every entry of every name-keyed registry is exercised, the way the model and data set
registries are: a new entry without a case here fails ``test_every_entry_has_a_case``.

Callbacks and LR controllers train through a checkpoint and must resume with the same
state; pruners keep the model's function on the channels they keep; runtimes time a
model; quantization methods write a model ONNX Runtime runs; export formats write a
file their runtime runs with PyTorch's outputs; command output adapters read a result;
search methods give an Optuna sampler that proposes values inside the sweep's space.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from edgetrain import models
from edgetrain.compress import (
    EXPORT_FORMATS,
    PRUNERS,
    QUANTIZE_METHODS,
    RUNTIMES,
    benchmark,
    export_model,
    export_onnx,
)
from edgetrain.compress.command_outputs import OUTPUT_ADAPTERS
from edgetrain.compress.quantize import quantize_onnx
from edgetrain.engine import CALLBACKS, LR_CONTROLLERS, Callback, Trainer
from edgetrain.registry import Registry
from edgetrain.search import SAMPLERS, load_sweep

CALLBACK_CASES: dict[str, dict[str, Any]] = {
    "abort-below": {"epoch": 5, "minimum": 1.0},
    "adaptive-batch": {"search": False, "budget_mb": 64.0, "multiple_of": 4},
    "adaptive-schedule": {"rows": 3, "ops_budget": 0.8},
    "channel-widths": {"widths": [6, 4, 10]},
    "ap-monitor": {"every": 2, "early_steps": 2, "subset": 16, "batch_size": 16},
    "early-stopping": {"patience": 3},
    # far above the net: every reconfiguration grows it (and the resume must rebuild that)
    "grow-prune": {"target_macs": 1e6, "interval": 1, "cycles": 2},
    "layer-schedule": {"schedule": "4421"},
    "lr-sensitivity": {"rates": 6, "low": 1e-3, "high": 1.0},
    "morphnet": {"strength": 1e-6},
    "prunetrain": {"ratio": 0.2, "interval": 1},
    "temperature-monitor": {"every": 2},
    "weight-snapshots": {},
}
LR_CONTROLLER_CASES: dict[str, dict[str, Any]] = {"actcool": {"t_start": 3.17}}
PRUNER_CASES: dict[str, dict[str, Any]] = {"l1_filter": {"sparsity": 0.5}}
RUNTIME_CASES = {"onnxruntime", "openvino", "executorch", "command"}
QUANTIZE_CASES = {"int8_static", "int8_dynamic", "fp16"}
EXPORT_CASES = {"onnx", "openvino", "executorch"}
OUTPUT_CASES = {
    "json": ('{"latency_ms": [1.0, 2.0]}', None, [1.0, 2.0]),
    "benchmark_app": ("", '{"execution_results": {"latency (ms)": "0.25"}}', [0.25]),
}
SAMPLER_CASES: dict[str, dict[str, Any]] = {
    "grid": {"values": [0.2, 0.4]},
    "random": {"min": 0.1, "max": 0.5},
    "bayes": {"min": 0.1, "max": 0.5},
    "gp": {"min": 0.1, "max": 0.5},
    "nsga2": {"min": 0.1, "max": 0.5},
}


@pytest.mark.parametrize(
    ("registry", "cases"),
    [
        (CALLBACKS, CALLBACK_CASES),
        (LR_CONTROLLERS, LR_CONTROLLER_CASES),
        (PRUNERS, PRUNER_CASES),
        (RUNTIMES, RUNTIME_CASES),
        (QUANTIZE_METHODS, QUANTIZE_CASES),
        (EXPORT_FORMATS, EXPORT_CASES),
        (OUTPUT_ADAPTERS, OUTPUT_CASES),
        (SAMPLERS, SAMPLER_CASES),
    ],
    ids=lambda x: x.kind if isinstance(x, Registry) else "",
)
def test_every_entry_has_a_case(registry: Registry[Any], cases: Any) -> None:
    assert set(registry.names()) == set(cases)


# --------------------------------------------------------------------- callbacks
def _resnet() -> torch.nn.Module:
    return models.create(
        "resnet_cifar",
        stages=1,
        blocks=[2],
        widths=[8],
        in_channels=1,
        num_classes=4,
        input_size=8,
    )


def _trainer(run: Path, callback: Callback, data: Any) -> Trainer:
    torch.manual_seed(0)
    train, val = data
    return Trainer(
        _resnet(),
        train,
        val_data=val,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        batch_size=16,
        device="cpu",
        progress=False,
        seed=3,
        run_dir=run,
        callbacks=[callback],
        architecture={"input_shape": [1, 8, 8]},
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.mark.parametrize(
    ("registry", "name", "options"),
    [(CALLBACKS, n, o) for n, o in CALLBACK_CASES.items()]
    + [(LR_CONTROLLERS, n, o) for n, o in LR_CONTROLLER_CASES.items()],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_a_callback_trains_and_its_state_survives_a_checkpoint(
    registry: Registry[Callback],
    name: str,
    options: dict[str, Any],
    tmp_path: Path,
    tiny_data: Any,
    single_thread: None,
) -> None:
    trainer = _trainer(tmp_path, registry.create(name, **options), tiny_data)
    trainer.fit(2)
    saved = trainer.callbacks[0].state_dict()
    resumed = _trainer(tmp_path, registry.create(name, **options), tiny_data)
    resumed.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert _same(resumed.callbacks[0].state_dict(), saved)
    assert resumed.state.epoch == 2
    assert {k: v.shape for k, v in resumed.model.state_dict().items()} == {
        k: v.shape for k, v in trainer.model.state_dict().items()
    }
    resumed.fit(3)  # and it trains on from there
    assert resumed.state.epoch == 3


# ----------------------------------------------------------------------- pruners
@pytest.mark.parametrize(("name", "options"), PRUNER_CASES.items())
def test_a_pruner_removes_filters_and_keeps_the_kept_channels_function(
    name: str, options: dict[str, Any]
) -> None:
    model = _resnet().eval()
    before = sum(p.numel() for p in model.parameters())
    groups = PRUNERS.create(name, model=model, layers=["layer1.0.conv1"], **options)
    assert groups and sum(p.numel() for p in model.parameters()) < before
    assert model.layer1[0].conv1.out_channels == 4
    x = torch.randn(2, 1, 8, 8)
    assert model(x).shape == (2, 4)


# ---------------------------------------------------------------------- runtimes
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(_resnet().eval(), path)
    return path


FAKE_RUNTIME = """
import json, sys
print(json.dumps({"latency_ms": [1.0, 2.0, 3.0]}))
"""


def _skip_missing(name: str) -> None:
    missing = RUNTIMES.entry(name).fn.missing()
    if missing is not None:
        pytest.skip(f"runtime {name} is not installed ({missing})")


@pytest.mark.parametrize("name", sorted(RUNTIME_CASES))
def test_a_runtime_times_a_model(name: str, onnx_model: Path, tmp_path: Path) -> None:
    import sys

    _skip_missing(name)
    options: dict[str, Any] = {}
    if RUNTIMES.entry(name).fn.export_format == "executorch":
        onnx_model = export_model(_resnet(), tmp_path / "m.pte", "executorch").path
    if name == "command":
        script = tmp_path / "bench.py"
        script.write_text(FAKE_RUNTIME)
        options = {"command": [sys.executable, str(script), "{model}"]}
    result = benchmark(
        onnx_model,
        runtime=name,
        runs=3,
        repeats=1,
        warmup=1,
        throughput_batch=None,
        profile=False,
        runtime_options=options,
    )
    assert result.runtime == name and result.latency_ms is not None and result.latency_ms > 0
    runtime = RUNTIMES.create(name, **options)
    if runtime.times_ops:
        assert runtime.op_times(onnx_model, runs=2, warmup=1)
    else:
        with pytest.raises(Exception, match="cannot time single operators"):
            runtime.op_times(onnx_model)


# ------------------------------------------------------------ quantization methods
@pytest.mark.parametrize("name", sorted(QUANTIZE_CASES))
def test_a_quantization_method_writes_a_model_the_runtime_runs(
    name: str, onnx_model: Path, tmp_path: Path
) -> None:
    calibrated = QUANTIZE_METHODS.entry(name).meta.get("calibrated")
    batches = [torch.randn(4, 1, 8, 8) for _ in range(2)] if calibrated else None
    result = quantize_onnx(onnx_model, tmp_path / "q.onnx", method=name, calibration_data=batches)
    assert result.method == name and result.path.is_file()
    assert result.calibration_batches == (2 if calibrated else None)
    timed = benchmark(result.path, runs=2, repeats=1, warmup=0, throughput_batch=None)
    assert timed.latency_ms is not None


# ---------------------------------------------------------------- export formats
@pytest.mark.parametrize("name", sorted(EXPORT_CASES))
def test_an_export_format_writes_a_file_its_runtime_runs(name: str, tmp_path: Path) -> None:
    meta = EXPORT_FORMATS.entry(name).meta
    _skip_missing(meta["runtime"])
    result = export_model(_resnet(), tmp_path / f"m{meta['suffix']}", name)
    assert result.format == name and all(p.is_file() for p in result.files)
    assert result.max_rel_error < 1e-4  # checked on its runtime against PyTorch
    timed = benchmark(result.path, meta["runtime"], runs=2, repeats=1, warmup=0, profile=False)
    assert timed.latency_ms > 0


# -------------------------------------------------------- command output adapters
@pytest.mark.parametrize(("name", "case"), OUTPUT_CASES.items())
def test_an_output_adapter_reads_a_result(name: str, case: Any, tmp_path: Path) -> None:
    stdout, report, want = case
    if report is not None:
        (tmp_path / "benchmark_report.json").write_text(report)
    latencies, compute = OUTPUT_ADAPTERS.entry(name).fn(stdout, tmp_path, "prog")
    assert latencies == want and compute is None


# ---------------------------------------------------------------- search methods
@pytest.mark.parametrize(("name", "space"), SAMPLER_CASES.items())
def test_a_search_method_proposes_points_inside_the_space(name: str, space: dict) -> None:
    optuna = pytest.importorskip("optuna")
    from edgetrain.search import make_sampler
    from edgetrain.search.space import suggest

    metrics = [{"name": "latency_ms"}, {"name": "top1"}]
    least = int(SAMPLERS.entry(name).meta.get("min_objectives", 1))
    config, _ = load_sweep(
        {
            "name": "s",
            "method": name,
            "metric": metrics[: max(1, least)],
            "recipe": "r.yaml",
            "model": "runs/m",
            "parameters": {"s1.sparsity": space},
        }
    )
    seen: list[float] = []

    def objective(trial: Any) -> list[float]:
        value = suggest(trial, config.parameters)["s1.sparsity"]
        seen.append(value)
        return [value] * len(config.directions)

    study = optuna.create_study(sampler=make_sampler(config), directions=config.directions)
    study.optimize(objective, n_trials=3)
    assert seen
    if "values" in space:
        assert set(seen) <= set(space["values"])
    else:
        assert all(space["min"] <= v <= space["max"] for v in seen)
