"""Int8 quantization through ONNX Runtime: smaller files, close outputs, clear errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from edgetrain import models
from edgetrain.errors import EdgetrainError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgetrain.compress import quantize as quantize_module  # noqa: E402
from edgetrain.compress.export import export_onnx  # noqa: E402
from edgetrain.compress.quantize import int8_speed_note, quantize_onnx  # noqa: E402
from edgetrain.compress.runtime import onnx_session  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (3, 16, 16)


def _structured(n: int, seed: int) -> np.ndarray:
    """Ten smooth class prototypes plus noise: random, yet with image-like structure."""
    g = torch.Generator().manual_seed(1234)
    protos = torch.nn.functional.interpolate(torch.randn(10, 3, 4, 4, generator=g), size=16)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    return (protos[labels] + 0.3 * torch.randn(n, *SHAPE, generator=g)).numpy()


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create("vgg_small", input_size=16)
    path = tmp_path_factory.mktemp("quantize") / "vgg_small.onnx"
    export_onnx(model, path)
    return path


def _agreement(fp32_path, int8_path, x: np.ndarray) -> tuple[float, float]:
    want = onnx_session(fp32_path).run(None, {"input": x})[0]
    got = onnx_session(int8_path).run(None, {"input": x})[0]
    agree = float((want.argmax(1) == got.argmax(1)).mean())
    return agree, float(np.abs(want - got).max() / np.abs(want).max())


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(path).graph.node}


@pytest.fixture(autouse=True)
def _quiet_speed_note(monkeypatch):
    monkeypatch.setattr(quantize_module, "_warned", {"*"})
    monkeypatch.setattr(quantize_module, "int8_speed_note", lambda: None)


def test_int8_static_is_qdq_per_channel_smaller_and_close(fp32, tmp_path):
    batches = [_structured(16, seed) for seed in range(5)]
    out = tmp_path / "int8.onnx"
    result = quantize_onnx(fp32, out, calibration_data=iter(batches), calibration_batches=3)

    assert result.path == out and out.is_file()
    assert result.method == "int8_static" and result.calibration_batches == 3
    assert result.int8_bytes == out.stat().st_size < 0.4 * fp32.stat().st_size
    assert result.size_ratio < 0.4
    ops = _ops(out)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ format
    weight_scales = [
        i for i in onnx.load(out).graph.initializer if i.name.endswith("_scale") and i.dims
    ]
    assert weight_scales and max(i.dims[0] for i in weight_scales) == 64  # per output channel
    agree, rel = _agreement(fp32, out, _structured(64, seed=99))
    assert agree >= 0.85, agree
    assert rel < 0.2, rel
    assert [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]  # temporary files gone


def test_int8_static_takes_dataloader_pairs_and_tensors(fp32, tmp_path):
    pairs = [(torch.from_numpy(_structured(8, s)), torch.zeros(8)) for s in range(2)]
    result = quantize_onnx(fp32, tmp_path / "q.onnx", calibration_data=pairs)
    assert result.calibration_batches == 2


def test_int8_dynamic_runs_and_is_smaller(fp32, tmp_path):
    out = tmp_path / "dyn.onnx"
    result = quantize_onnx(fp32, out, method="int8_dynamic")
    assert result.calibration_batches is None
    assert result.int8_bytes < 0.4 * result.fp32_bytes
    assert "DynamicQuantizeLinear" in _ops(out)
    agree, _ = _agreement(fp32, out, _structured(64, seed=99))
    assert agree >= 0.85, agree


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"method": "int4"}, "unknown quantization method 'int4'"),
        ({}, "int8_static needs calibration_data"),
        ({"calibration_data": []}, "calibration_data gave no batches"),
        ({"calibration_data": [np.zeros((2, 3, 8, 8))]}, "2x3x8x8 does not fit"),
        ({"calibration_data": [np.zeros((1,))], "calibration_batches": 0}, "at least 1"),
    ],
)
def test_bad_quantize_input_is_one_line_and_writes_nothing(fp32, tmp_path, kwargs, needle):
    out = tmp_path / "q.onnx"
    with pytest.raises(EdgetrainError) as exc:
        quantize_onnx(fp32, out, **kwargs)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert not list(tmp_path.iterdir())


def test_missing_fp32_model(tmp_path):
    with pytest.raises(EdgetrainError, match="not found"):
        quantize_onnx(tmp_path / "none.onnx", tmp_path / "q.onnx", method="int8_dynamic")


X86_FLAGS = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 fma {}\n"
ARM_FEATURES = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes {}\n"


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "slow"),
    [
        (X86_FLAGS.format("avx512_vnni"), "x86_64", False),
        (X86_FLAGS.format("avx_vnni"), "x86_64", False),
        (X86_FLAGS.format("amx_int8 amx_tile"), "AMD64", False),
        (X86_FLAGS.format(""), "x86_64", True),
        (ARM_FEATURES.format("asimddp"), "aarch64", False),
        (ARM_FEATURES.format("i8mm"), "arm64", False),
        (ARM_FEATURES.format("crc32"), "aarch64", True),
        ("", "x86_64", False),  # nothing to inspect: no claim
        (X86_FLAGS.format(""), "riscv64", False),
    ],
)
def test_int8_speed_note_reads_the_cpu_flags(cpuinfo, machine, slow):
    text = int8_speed_note(cpuinfo, machine)  # imported before the fixture patches the module
    assert (text is not None) == slow
    if slow:
        assert "no int8 dot-product instructions" in text and "\n" not in text
        assert ("avx512_vnni" in text) == (machine == "x86_64")
        assert ("Some CPU" in text) == (machine == "x86_64")


def test_quantizing_without_int8_instructions_warns_once(fp32, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "_warned", set())
    monkeypatch.setattr(quantize_module, "int8_speed_note", lambda: "this CPU is slow at int8")
    with pytest.warns(RuntimeWarning, match="slow at int8"):
        first = quantize_onnx(fp32, tmp_path / "a.onnx", method="int8_dynamic")
    assert first.speed_note == "this CPU is slow at int8"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = quantize_onnx(fp32, tmp_path / "b.onnx", method="int8_dynamic")
    assert second.speed_note == "this CPU is slow at int8"
