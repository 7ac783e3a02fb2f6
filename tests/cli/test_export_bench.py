"""``edgetrain export`` and ``edgetrain bench`` end to end on a run trained on digits."""

from __future__ import annotations

import json
import sys

import pytest
from _output import one_line

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("single_thread")

FAKE_BENCH = 'import json, sys; print(json.dumps({"latency_ms": [1.5, 2.5], "argv": sys.argv}))'


def test_export_then_bench_a_trained_run(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--epochs", "1", "--no-progress", "--no-report")
    run = tmp_path / "runs" / "tiny"

    out = cli("export", str(run), "--out", "model.onnx", "--opset", "17").output
    assert (tmp_path / "model.onnx").is_file()
    assert "wrote model.onnx" in out and "opset 17" in out and "input Nx1x8x8" in out
    assert "max abs error" in out
    cli("export", str(run), "--checkpoint", "last")  # default: model.onnx in the run
    assert (run / "model.onnx").is_file()

    out = cli(
        "bench", "model.onnx", "--runs", "5", "--warmup", "1", "--batch", "4", "--json", "b.json"
    ).output
    for word in ("median", "p90", "compute", "samples/s @4", "spread"):
        assert word in out, word
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["runtime"] == "onnxruntime" and result["threads"] == 1
    assert len(result["repeats"]) == 3 and result["runs"] == 5
    assert result["latency_ms"] > 0 and result["compute_ms"] > 0 and result["throughput"] > 0
    assert result["file_bytes"] == (tmp_path / "model.onnx").stat().st_size

    out = cli("bench", "model.onnx", "--runs", "5", "--repeats", "1", "--ops").output
    assert "kernel time per operator type" in out and "Conv" in out and "%" in out
    out = cli("bench", "model.onnx", "--runs", "5", "--repeats", "1", "--ops", "--layers").output
    assert "kernel time per layer" in out and "(Conv)" in out
    cli("bench", "model.onnx", "--layers", code=2)

    script = tmp_path / "fake_bench.py"
    script.write_text(FAKE_BENCH)
    command = json.dumps([sys.executable, str(script), "{model}"])
    out = cli("bench", "model.onnx", "--command", command, "--repeats", "2").output
    assert "on command" in out and "2.000" in out  # median of [1.5, 2.5]
    assert "throughput skipped" in out


def _installed(name: str) -> bool:
    from edgetrain.compress.runtime import RUNTIMES

    return RUNTIMES.entry(name).fn.missing() is None


def test_export_every_format_and_bench_on_all_runtimes(cli, tiny_recipe, tmp_path):
    cli("train", str(tiny_recipe), "--epochs", "1", "--no-progress", "--no-report")
    run = tmp_path / "runs" / "tiny"
    out = cli("export", str(run), "--precision", "fp16").output
    assert "model.fp16.onnx" in out and "onnx fp16" in out
    assert (run / "model.fp16.onnx").is_file()
    if _installed("openvino"):
        out = cli("export", str(run), "-f", "openvino", "--precision", "fp16").output
        assert "model.fp16.xml + model.fp16.bin" in out and "openvino vs PyTorch" in out
    if _installed("executorch"):
        out = cli("export", str(run), "-f", "executorch", "--out", "m.pte").output
        assert "wrote m.pte" in out and "input 1x1x8x8" in out
        assert "opset" not in out
        out = cli("bench", "m.pte", "--runs", "3", "--repeats", "1", "--batch", "0").output
        assert "on executorch" in out  # the runtime that reads the file
    cli("export", str(run), "-f", "executorch", "--precision", "fp16", code=2)

    out = cli(
        "bench", str(run), "--runtime", "all", "--runs", "3", "--repeats", "1",
        "--warmup", "1", "--batch", "4", "--json", "all.json",
    ).output  # fmt: skip
    results = json.loads((tmp_path / "all.json").read_text())
    names = [r["runtime"] for r in results]
    assert names[0] == "onnxruntime" and "command" not in names
    for name in ("openvino", "executorch"):
        assert (name in names) == _installed(name)
    if len(names) > 1:
        assert f"one model on {len(names)} runtimes" in out and "x first" in out
    assert all(r["latency_ms"] > 0 for r in results)

    cli("bench", str(run), "--runtime", "all", "-o", "precision=fp16", code=2)
    cli("bench", str(run), "--runtime", "all", "--ops", code=2)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "runs/none"], "does not exist"),
        (["export", ".", "--format", "tflite"], "unknown export format 'tflite'"),
        (["export", ".", "--checkpoint", "first"], "must be best or last"),
        (["bench", "none.onnx"], "not found"),
        (["bench", "bad.onnx", "--runs", "1", "--repeats", "1"], "ONNX Runtime cannot load"),
        (["bench", "bad.onnx", "--runtime", "tflite"], "unknown runtime 'tflite'"),
        (["bench", "bad.onnx", "-o", "threads"], "--option 'threads' must look like key=value"),
        (["bench", "bad.onnx", "--runtime", "command"], "needs an argument list"),
        (["bench", "bad.onnx", "--command", "prog {model}"], "must be a JSON list"),
        (["bench", "bad.onnx", "--command", '["prog"]'], "no '{model}' argument"),
        (
            ["bench", "bad.onnx", "--command", '["p", "{model}"]', "--ops"],
            "runtime 'command' cannot time single operators; use one that can",
        ),
        (
            ["bench", "bad.onnx", "--runtime", "onnxruntime", "--command", '["p", "{model}"]'],
            "runtime 'onnxruntime' has no option 'command'",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(cli, tmp_path, args, needle):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    result = cli(*args, code=2)
    assert needle in one_line(result.output)
    if args[0] == "export":
        assert [p.name for p in tmp_path.rglob("*.onnx")] == ["bad.onnx"]
