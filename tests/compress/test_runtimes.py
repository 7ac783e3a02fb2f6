"""The runtime registry: every installed runtime runs the zoo with PyTorch's outputs,
missing ones name their install line, fp16 files keep their accuracy, and the command
runtime reads OpenVINO benchmark_app reports."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetrain import models
from edgetrain.compress import benchmark
from edgetrain.compress.benchmark import runtimes_for
from edgetrain.compress.export import compare_outputs
from edgetrain.compress.formats import EXPORT_FORMATS, export_model
from edgetrain.compress.runtime import RUNTIMES
from edgetrain.errors import EdgetrainError, MissingDependencyError

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("single_thread")

IN_PROCESS = ("onnxruntime", "openvino", "executorch")


def _installed(name: str) -> bool:
    return RUNTIMES.entry(name).fn.missing() is None


def _needs(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not _installed(name), reason=f"{name} is not installed")


def _trained_looking(name: str) -> torch.nn.Module:
    """A zoo model with non-trivial batch-norm statistics (as after training)."""
    torch.manual_seed(0)
    model = models.create(name)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", IN_PROCESS)
def test_each_runtime_is_registered_and_says_how_to_install_it(name, monkeypatch):
    entry = RUNTIMES.entry(name)
    assert entry.fn.suffixes and entry.fn.export_format in EXPORT_FORMATS
    if entry.fn.missing() is None:
        assert entry.fn().gives_outputs
    # Without its package, creating it names the pip line of its extra.
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}
    for key in list(sys.modules):
        if key == module[name] or key.startswith(module[name] + "."):
            monkeypatch.setitem(sys.modules, key, None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgetrain\["):
        RUNTIMES.create(name)


def test_missing_names_the_extra_without_importing(monkeypatch):
    import importlib.util

    from edgetrain.compress import runtime as runtime_module

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert runtime_module._missing_module("openvino", "openvino") == (
        "pip install 'edgetrain[openvino]' (installs openvino)"
    )


@_needs("openvino")
@pytest.mark.parametrize("name", models.MODELS.names())
def test_onnxruntime_and_openvino_agree_with_pytorch_on_the_zoo(name, tmp_path):
    model = _trained_looking(name)
    path = export_model(model, tmp_path / f"{name}.onnx").path
    x = torch.randn(3, *model.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    got = {rt: RUNTIMES.create(rt).predictor(path)(x.numpy()) for rt in ("onnxruntime", "openvino")}
    scale = np.abs(want).max()
    for rt, out in got.items():
        assert out.shape == want.shape
        assert np.abs(out - want).max() <= 1e-4 * scale + 1e-5, rt
    assert np.abs(got["onnxruntime"] - got["openvino"]).max() <= 1e-4 * scale + 1e-5


@_needs("executorch")
@pytest.mark.parametrize("name", ["ds_cnn", "mobilenet_v3_small", "vgg_small"])
def test_executorch_programs_agree_with_pytorch(name, tmp_path):
    model = _trained_looking(name)
    result = export_model(model, tmp_path / f"{name}.pte", "executorch", batch=2)
    assert result.batch == 2 and result.max_rel_error < 1e-4
    predict = RUNTIMES.create("executorch").predictor(result.path)
    x = torch.randn(5, *model.input_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x).numpy()
    got = predict(x.numpy())  # five samples through a batch-2 program: chunked and padded
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    bench = benchmark(result.path, "executorch", runs=3, repeats=1, warmup=1, batch=2)
    assert bench.latency_ms > 0 and bench.compute_ms is None
    assert any("exported for batch 2 only" in n for n in bench.notes)  # no throughput run


@_needs("openvino")
def test_openvino_runs_ir_fp16_and_reports_counters(tmp_path):
    model = _trained_looking("vgg_small")
    fp32 = export_model(model, tmp_path / "m.xml", "openvino")
    fp16 = export_model(model, tmp_path / "m16.xml", "openvino", "fp16")
    assert [p.name for p in fp16.files] == ["m16.xml", "m16.bin"]
    assert fp16.file_bytes < 0.6 * fp32.file_bytes  # weights stored in half precision
    assert 0 < fp16.max_rel_error < 1e-2
    rt = RUNTIMES.create("openvino")
    result = benchmark(fp16.path, rt, runs=5, repeats=1, warmup=1, throughput_batch=4)
    assert result.file_bytes == fp16.file_bytes  # the .bin counts
    assert result.compute_ms is not None and result.compute_ms > 0
    assert result.throughput is not None
    ops = rt.op_times(fp32.path, runs=3, warmup=1)
    assert "Convolution" in ops and all(v >= 0 for v in ops.values())
    layers = rt.op_times(fp32.path, runs=3, warmup=1, by="layer")
    assert len(layers) > len(ops) and any("(Convolution, " in k for k in layers)
    assert sum(layers.values()) == pytest.approx(sum(ops.values()), rel=0.5)
    with pytest.raises(EdgetrainError, match="group by 'type' or 'layer'"):
        rt.op_times(fp32.path, by="node")


@_needs("openvino")
def test_openvino_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(EdgetrainError, match="precision 'int4' is not one of fp32, fp16, bf16"):
        RUNTIMES.create("openvino", precision="int4")
    with pytest.raises(EdgetrainError, match="device 'TPU' is not available here"):
        RUNTIMES.create("openvino", device="TPU")
    with pytest.raises(EdgetrainError, match="hint 'fast' is not one of latency, throughput"):
        RUNTIMES.create("openvino", hint="fast")
    xml = tmp_path / "lonely.xml"
    xml.write_text("<net/>")
    with pytest.raises(EdgetrainError, match="has no weights file 'lonely.bin'"):
        benchmark(xml, "openvino", runs=1, repeats=1)
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"x")
    with pytest.raises(EdgetrainError, match=r"reads \.onnx or \.xml files, not 'm.pte'"):
        benchmark(pte, "openvino", runs=1, repeats=1)


def test_onnxruntime_takes_an_installed_execution_provider_only(tmp_path):
    rt = RUNTIMES.create("onnxruntime", provider="cpu")
    assert rt.provider == "CPUExecutionProvider"
    with pytest.raises(EdgetrainError, match="provider 'tensorrt' is not installed here"):
        RUNTIMES.create("onnxruntime", provider="tensorrt")


def test_fp16_onnx_is_half_the_size_and_close(tmp_path):
    model = _trained_looking("resnet8")
    fp32 = export_model(model, tmp_path / "m.onnx")
    fp16 = export_model(model, tmp_path / "m16.onnx", precision="fp16")
    assert fp16.file_bytes < 0.6 * fp32.file_bytes
    assert fp32.max_rel_error < 1e-5 < fp16.max_rel_error < 1e-2
    session_inputs = RUNTIMES.create("onnxruntime")._session(fp16.path).get_inputs()
    assert session_inputs[0].type == "tensor(float)"  # callers feed float32 as before


def test_export_refuses_bad_formats_precisions_and_names(tmp_path):
    model = models.create("vgg_small", input_size=8)
    with pytest.raises(EdgetrainError, match="unknown export format 'tflite'"):
        export_model(model, tmp_path / "m.tflite", "tflite")
    with pytest.raises(EdgetrainError, match="writes a .xml file, not 'm.onnx'"):
        export_model(model, tmp_path / "m.onnx", "openvino")
    with pytest.raises(EdgetrainError, match="'executorch' writes fp32, not 'fp16'"):
        export_model(model, tmp_path / "m.pte", "executorch", "fp16")
    assert list(tmp_path.iterdir()) == []


def test_compare_outputs_refuses_a_file_that_computes_something_else():
    model = models.create("vgg_small", input_size=8).eval()

    def off_by_a_little(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy() * 1.01

    with pytest.raises(EdgetrainError, match="differ from PyTorch's"):
        compare_outputs(model, off_by_a_little, (3, 8, 8), 2, 1e-4, 1e-3, "a runtime")
    max_abs, max_rel = compare_outputs(
        model, off_by_a_little, (3, 8, 8), 2, 2e-2, 0, "it", relative_atol=True
    )
    assert 0 < max_rel <= 0.0101 and max_abs > 0


def test_runtimes_for_a_file_names_why_others_are_left_out(tmp_path):
    names, skipped = runtimes_for(tmp_path / "m.onnx")
    assert "onnxruntime" in names and "command" not in names
    assert ("openvino" in names) == _installed("openvino")
    if _installed("executorch"):
        assert any(s.startswith("executorch: reads .pte") for s in skipped)
    names, _ = runtimes_for(tmp_path / "m.pte")
    assert "onnxruntime" not in names


FAKE_BENCHMARK_APP = """
import json, pathlib, sys
folder = pathlib.Path(sys.argv[sys.argv.index("-report_folder") + 1])
report = {"execution_results": {"latency (ms)": "0.04", "throughput": "20000"}}
(folder / "benchmark_report.json").write_text(json.dumps(report))
print("[ INFO ] Latency:")
print("[ INFO ]    Median:        42.13 us")
"""


def test_command_reads_a_benchmark_app_report(tmp_path):
    script = tmp_path / "fake_benchmark_app.py"
    script.write_text(FAKE_BENCHMARK_APP)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"opaque to the command runtime")
    command = [sys.executable, str(script), "-m", "{model}", "-report_folder", "{report_dir}"]
    rt = RUNTIMES.create("command", command=command, output="benchmark_app")
    m = rt.measure(model, batch=1, warmup=0, runs=1, threads=1, profile=False)
    assert m.latencies_ms == [pytest.approx(0.04213)]  # the printed median, not the rounded
    with pytest.raises(EdgetrainError, match="put '\\{report_dir\\}' in the command"):
        RUNTIMES.create("command", command=command[:-2], output="benchmark_app")
    with pytest.raises(EdgetrainError, match="unknown command output adapter 'csv'"):
        RUNTIMES.create("command", command=command, output="csv")
    silent = [sys.executable, "-c", "pass", "{model}", "{report_dir}"]
    with pytest.raises(EdgetrainError, match="wrote no benchmark_app report"):
        RUNTIMES.create("command", command=silent, output="benchmark_app").measure(
            model, batch=1, warmup=0, runs=1, threads=1, profile=False
        )


def _benchmark_app() -> str | None:
    beside = Path(sys.executable).parent / "benchmark_app"  # the virtual environment's
    return str(beside) if beside.is_file() else shutil.which("benchmark_app")


@_needs("openvino")
@pytest.mark.skipif(_benchmark_app() is None, reason="no benchmark_app")
def test_the_real_benchmark_app_through_the_command_runtime(tmp_path):
    model = _trained_looking("vgg_small")
    path = export_model(model, tmp_path / "m.onnx").path
    program = str(_benchmark_app())
    command = [
        program, "-m", "{model}", "-d", "CPU", "-hint", "none", "-nstreams", "1",
        "-nthreads", "{threads}", "-niter", "{runs}", "-b", "{batch}", "-infer_precision",
        "f32", "-report_type", "no_counters", "-report_folder", "{report_dir}", "-json_stats",
    ]  # fmt: skip
    rt = RUNTIMES.create("command", command=command, output="benchmark_app", timeout_s=120)
    result = benchmark(path, rt, runs=20, repeats=1, throughput_batch=None, profile=False)
    assert 0 < result.latency_ms < 1000
    report = json.loads(json.dumps(result.to_dict()))
    assert report["runtime"] == "command"


@_needs("executorch")
def test_deploy_for_executorch_writes_and_scores_a_program(tmp_path):
    from edgetrain.compress import deploy, load_recipe
    from edgetrain.data import create as create_data

    test = create_data("digits", "test")
    model = models.create("vgg_small", in_channels=1, input_size=8, num_classes=10).eval()
    recipe = load_recipe({"version": 1, "pruners": {}})
    on_ort = deploy(model, recipe, tmp_path / "ort", test)
    (pte,) = deploy(model, recipe, tmp_path / "et", test, runtime="executorch")
    assert pte.path.name == "model.pte" and pte.path.is_file()
    # the same network scored by ExecuTorch and by ONNX Runtime
    assert pte.metrics["top1"] == pytest.approx(on_ort[0].metrics["top1"])
    assert pte.metrics["loss"] == pytest.approx(on_ort[0].metrics["loss"], rel=1e-4)
    quantized = load_recipe({"version": 1, "pruners": {}, "quantize": {"method": "fp16"}})
    with pytest.raises(EdgetrainError, match="which edgetrain does not quantize"):
        deploy(model, quantized, tmp_path / "q", test, runtime="executorch")


def test_deploy_fp16_is_scored_like_int8(tmp_path):
    from edgetrain.compress import deploy, load_recipe
    from edgetrain.data import create as create_data

    test = create_data("digits", "test")
    model = models.create("vgg_small", in_channels=1, input_size=8, num_classes=10).eval()
    recipe = load_recipe({"version": 1, "pruners": {}, "quantize": {"method": "fp16"}})
    fp32, fp16 = deploy(model, recipe, tmp_path, test)
    assert fp16.name == "fp16" and fp16.path.name == "model.fp16.onnx"
    assert fp16.size_bytes < 0.6 * fp32.size_bytes
    assert abs(fp16.metrics["top1"] - fp32.metrics["top1"]) <= 1.0  # within a point


class _UserNet(torch.nn.Module):
    """Not a zoo model: concat, a depthwise conv, functional activations, LayerNorm."""

    input_shape = (3, 16, 16)

    def __init__(self, python_batch: bool = False) -> None:
        super().__init__()
        self.python_batch = python_batch  # a batch size read as a Python int
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.b = torch.nn.Conv2d(3, 8, 1)
        self.ln = torch.nn.LayerNorm(256)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional
        y = torch.cat([f.gelu(self.dw(self.a(x))), f.silu(self.b(x))], 1)
        y = f.adaptive_avg_pool2d(y, 4).flatten(2)  # (N, 16 channels, 16 positions)
        n = len(y) if self.python_batch else y.shape[0]
        y = self.ln(y.transpose(1, 2).reshape(n, -1)).reshape(n, 16, 16).mean(1)
        return self.fc(y)


@pytest.mark.parametrize("fmt", sorted(EXPORT_FORMATS.names()))
def test_every_format_exports_a_user_model_faithfully(fmt, tmp_path):
    meta = EXPORT_FORMATS.entry(fmt).meta
    if not _installed(meta["runtime"]):
        pytest.skip(f"{meta['runtime']} is not installed")
    torch.manual_seed(0)
    result = export_model(_UserNet().eval(), tmp_path / f"m{meta['suffix']}", fmt)
    assert result.max_rel_error < 1e-5  # checked on its own runtime against PyTorch
    if fmt != "executorch":  # a fixed-batch format: the batch is the example's anyway
        # a batch size frozen into the graph is refused in one line, no file left
        with pytest.raises(EdgetrainError, match="cannot run the exported model at batch 2"):
            export_model(_UserNet(python_batch=True).eval(), tmp_path / f"b{meta['suffix']}", fmt)
        assert not (tmp_path / f"b{meta['suffix']}").exists()
