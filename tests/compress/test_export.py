"""ONNX export: ONNX Runtime equals PyTorch on the zoo, and every failure is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgetrain import models
from edgetrain.errors import EdgetrainError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgetrain.compress.export import check_onnx, export_onnx  # noqa: E402
from edgetrain.compress.runtime import onnx_session  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("small_cnn", {"input_size": 16}),
        ("vgg_small", {}),
        ("resnet20", {}),
        ("fcn1d", {}),  # 1-D time series
    ],
)
def test_onnx_runtime_matches_pytorch_on_the_zoo(tmp_path, name, options):
    torch.manual_seed(0)
    model = models.create(name, **options)
    model.train()
    rng = torch.random.get_rng_state()
    result = export_onnx(model, tmp_path / f"{name}.onnx")

    assert model.training  # restored after the eval-mode export
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's stream is untouched
    assert result.path.is_file() and result.file_bytes == result.path.stat().st_size
    assert result.input_shape == model.input_shape and result.opset == 17
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
    assert result.max_rel_error is not None and result.max_rel_error < 1e-3
    proto = onnx.load(result.path)
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    # An independent check at another batch size: the batch dimension is really dynamic.
    x = torch.randn(5, *model.input_shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = onnx_session(result.path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_fixed_batch_and_explicit_input_shape(tmp_path):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    result = export_onnx(
        model, tmp_path / "m.onnx", input_shape=(2, 6, 6), batch=2, dynamic_batch=False
    )
    assert result.input_shape == (2, 6, 6) and not result.dynamic_batch
    dims = onnx.load(result.path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 2, 6, 6]


def test_missing_input_shape_and_bad_batch_are_one_line(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(EdgetrainError) as exc:
        export_onnx(model, tmp_path / "m.onnx")
    assert "input_shape=" in _one_line(exc) and "Sequential" in str(exc.value)
    with pytest.raises(EdgetrainError) as exc:
        export_onnx(model, tmp_path / "m.onnx", input_shape=(4,), batch=0)
    assert "batch=0" in _one_line(exc)
    assert not (tmp_path / "m.onnx").exists()


def _invalid_model() -> bytes:
    """A graph whose only node reads a tensor nobody defines."""
    h = onnx.helper
    node = h.make_node("Relu", ["ghost"], ["y"])
    graph = h.make_graph(
        [node],
        "broken",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
    )
    return h.make_model(graph).SerializeToString()


def test_check_onnx_rejects_invalid_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(_invalid_model())
    with pytest.raises(EdgetrainError) as exc:
        check_onnx(bad)
    assert "ONNX checker rejected" in _one_line(exc) and "ghost" in str(exc.value)

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is no protobuf")
    with pytest.raises(EdgetrainError) as exc:
        check_onnx(corrupt)
    assert "not an ONNX model" in _one_line(exc)

    with pytest.raises(EdgetrainError) as exc:
        check_onnx(tmp_path / "none.onnx")
    assert "not found" in _one_line(exc)


def test_checker_failure_writes_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")

    def reject(model, full_check=False):
        raise onnx.checker.ValidationError("Field 'type' of 'value_info' is required")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(EdgetrainError) as exc:
        export_onnx(models.create("fcn1d"), target)
    assert "ONNX checker rejected the exported model" in _one_line(exc)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


class _CallCounter(nn.Module):
    """Scales by how often it was called: the tracer freezes the count as a constant."""

    input_shape = (3,)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float(self.calls)


def test_outputs_beyond_tolerance_are_refused(tmp_path):
    with pytest.raises(EdgetrainError) as exc:
        export_onnx(_CallCounter(), tmp_path / "m.onnx")
    message = _one_line(exc)
    assert "differ from PyTorch" in message and "atol=0.0001" in message
    assert not (tmp_path / "m.onnx").exists()
    # Without the check the (unfaithful) file is written and no error is measured.
    result = export_onnx(_CallCounter(), tmp_path / "m.onnx", check=False)
    assert result.max_abs_error is None and result.path.is_file()


@pytest.mark.parametrize("opset", [3, 99])
def test_an_opset_the_exporter_cannot_write_is_one_line(tmp_path, opset):
    from edgetrain.compress.export import opset_range

    low, high = opset_range()
    with pytest.raises(EdgetrainError) as err:
        export_onnx(models.create("small_cnn"), tmp_path / "m.onnx", opset=opset)
    assert str(err.value) == (
        f"ONNX opset {opset} cannot be exported; give one from {low} to {high} (default 17)"
    )
    assert not (tmp_path / "m.onnx").exists()
