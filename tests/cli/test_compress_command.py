"""``edgetrain compress`` end to end on a tiny ResNet trained on the digits."""

from __future__ import annotations

import csv
import json

import pytest
from _output import one_line

from edgetrain.engine import load_checkpoint
from edgetrain.runs import load_trained_model

pytest.importorskip("torch_pruning")

pytestmark = pytest.mark.usefixtures("single_thread")

RECIPE = """
version: 1
pruners:
  inner: {method: l1_filter, sparsity: 0.5, layers: ["layer1.*.conv1"]}
finetune: {epochs: 1, lr: 0.01, scheduler: {name: exponential, gamma: 0.9, start_epoch: 1}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, copy_tiny_resnet_run):
    """A folder with a one-stage ResNet run trained by ``edgetrain train`` (runs/tiny)
    and the pruning recipe."""
    root = tmp_path_factory.mktemp("compress-cli")
    copy_tiny_resnet_run(root)
    (root / "recipe.yaml").write_text(RECIPE)
    return root


def test_compress_prunes_evaluates_finetunes_and_writes_a_run_directory(cli, trained, tmp_path):
    run, out = trained / "runs" / "tiny", tmp_path / "tiny-c"
    args = ("compress", str(run), "--recipe", str(trained / "recipe.yaml"), "--out", str(out))
    output = cli(*args, "--no-progress", "--no-report").output
    for text in ("pruned layers", "layer1.0.conv1", "8 -> 4", "inference MACs", "test top-1"):
        assert text in output

    report = json.loads((out / "compress.json").read_text())
    assert report["filters_after"]["layer1.0.conv1"] == 4
    assert report["macs_after"] < report["macs_before"]
    assert 0 <= report["top1_after"] <= 100 and report["top1_before"] > 10
    assert isinstance(report["ruined"], bool) and report["num_classes"] == 10
    assert report["finetune"]["epochs"] == 1
    assert report["source"].endswith("best.pt")
    assert (out / "recipe.yaml").is_file() and (out / "config.yaml").is_file()

    assert load_checkpoint(out / "checkpoints" / "compressed.pt")["architecture"]["pruned"]
    tuned = load_trained_model(out)
    assert tuned.layer1[0].conv1.out_channels == 4
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_no_finetune_keeps_only_the_compressed_model(cli, trained, tmp_path):
    run = trained / "runs" / "tiny"
    args = ("compress", "run", str(run), "--recipe", str(trained / "recipe.yaml"))
    cli(*args, "--no-finetune", "--set", "inner.sparsity=0.25")
    out = tmp_path / "runs" / "tiny-recipe"  # default: runs/<run name>-<recipe name>
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "compress.json", "recipe.yaml"]
    report = json.loads((out / "compress.json").read_text())
    assert report["finetune"] is None
    assert report["recipe"]["pruners"]["inner"]["sparsity"] == 0.25
    model = load_trained_model(out / "checkpoints" / "compressed.pt")
    assert model.layer1[1].conv1.out_channels == 6


def test_export_and_quantize_sections_write_checked_onnx_files(cli, trained, tmp_path):
    pytest.importorskip("onnxruntime")
    recipe = tmp_path / "deploy.yaml"
    recipe.write_text(
        RECIPE + "quantize: {method: int8_static, calibration_batches: 2}\nexport: {opset: 17}\n"
    )
    run, out = trained / "runs" / "tiny", tmp_path / "deployed"
    args = ("compress", str(run), "--recipe", str(recipe), "--out", str(out), "--no-finetune")
    output = cli(*args, "--bench").output
    assert "deployed files" in output and "int8_static" in output
    report = json.loads((out / "compress.json").read_text())
    fp32, int8 = report["deployed"]
    assert (fp32["name"], int8["name"]) == ("fp32", "int8_static")
    assert (out / "model.onnx").is_file() and (out / "model.int8_static.onnx").is_file()
    # ONNX Runtime's FP32 accuracy is the PyTorch model's; int8 stays close
    assert fp32["top1"] == pytest.approx(report["top1_after"], abs=0.3)
    assert abs(int8["top1"] - fp32["top1"]) < 10
    assert fp32["bench"]["latency_ms"] > 0 and int8["bench"]["runs"] == 100


@pytest.mark.parametrize(
    ("recipe", "extra", "message"),
    [
        (
            RECIPE.replace("layer1.*.conv1", "layer2.*.conv1"),
            (),
            "pruners.inner.layers: 'layer2.*.conv1' matches no module; conv/linear layers:",
        ),
        (RECIPE.replace("sparsity: 0.5", "sparsity: 1.5"), (), "sparsity: must be in [0, 1)"),
        (RECIPE, ("--set", "inner.sparsity=2"), "pruners.inner.sparsity: must be in [0, 1)"),
        (RECIPE.replace("layer1.*.conv1", "layer1.0.conv2"), (), "shares its output channels"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_output(
    cli, trained, tmp_path, recipe, extra, message
):
    path = tmp_path / "bad.yaml"
    path.write_text(recipe)
    out = tmp_path / "out"
    args = ("compress", str(trained / "runs" / "tiny"), "--recipe", str(path), "--out", str(out))
    assert message in one_line(cli(*args, *extra, code=2).output)
    assert not out.exists()


def test_missing_run_or_recipe_and_existing_output_are_refused(cli, trained, tmp_path):
    run, recipe = str(trained / "runs" / "tiny"), str(trained / "recipe.yaml")
    line = one_line(cli("compress", run, "--recipe", "nope.yaml", code=2).output)
    assert "compression recipe 'nope.yaml' not found" in line and "resnet20-l1" in line
    line = one_line(cli("compress", str(tmp_path), "--recipe", recipe, code=2).output)
    assert "no checkpoint in" in line
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    args = ("compress", run, "--recipe", recipe, "--out", str(tmp_path / "taken"))
    assert "pass --overwrite" in one_line(cli(*args, code=2).output)


def test_a_compression_that_did_not_finish_is_never_taken_for_a_complete_one(
    cli, trained, tmp_path
):
    import shutil

    partial = tmp_path / "partial"  # killed during fine-tuning: checkpoints, no report
    shutil.copytree(trained / "runs" / "tiny", partial)
    (partial / "recipe.yaml").write_text(RECIPE)
    resume = cli("train", "--resume", str(partial), "--no-progress", code=2).output
    export = cli("export", str(partial), "-o", str(tmp_path / "m.onnx"), code=2).output
    for output in (resume, export):
        line = one_line(output)
        assert "is a compression that did not finish (no compress.json)" in line
        assert "run edgetrain compress again with --overwrite" in line
    assert not (tmp_path / "m.onnx").exists()


def test_sensitivity_writes_csv_and_plot(cli, trained, tmp_path):
    out = tmp_path / "sens"
    output = cli(
        "compress",
        "sensitivity",
        str(trained / "runs" / "tiny"),
        "--layers",
        "layer1.*.conv1",
        "--group",
        "layer1.0.conv1,layer1.1.conv1",
        "--sparsities",
        "0.5,0.75",
        "--out",
        str(out),
    ).output
    assert "layer1.1.conv1" in output and "0.75" in output
    with (out / "sensitivity.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["target"] for r in rows] == ["layer1.0.conv1"] * 3 + ["layer1.1.conv1"] * 3 + [
        "layer1.0.conv1+layer1.1.conv1"
    ] * 3
    assert [int(r["filters_after"]) for r in rows[:3]] == [8, 4, 2]
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    line = one_line(
        cli(
            "compress", "sensitivity", str(trained / "runs" / "tiny"), "--sparsities", "x", code=2
        ).output
    )
    assert "--sparsities 'x' must be comma-separated numbers" in line


def test_latency_sensitivity_and_a_recipe_grouped_from_it(cli, trained, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "sens"
    recipe = tmp_path / "auto.yaml"
    output = cli(
        "compress", "sensitivity", str(trained / "runs" / "tiny"), "--layers", "layer1.*.conv1",
        "--sparsities", "0.5", "--metric", "latency", "--runs", "5", "--repeats", "1",
        "--out", str(out), "--recipe-out", str(recipe), "--max-drop", "100",
    ).output  # fmt: skip
    assert "latency relative to the unpruned model" in " ".join(output.split())
    with (out / "sensitivity.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    assert f"recipe: {recipe}" in output.replace("\n", "")
    from edgetrain.compress.recipe import load_recipe

    load_recipe(recipe)  # whatever paid on this machine, the written recipe loads
    # a point must save all of the latency: none does, so no recipe is written
    recipe.unlink()
    none = cli(
        "compress", "sensitivity", str(trained / "runs" / "tiny"), "--layers", "layer1.*.conv1",
        "--sparsities", "0.5", "--metric", "latency", "--runs", "5", "--repeats", "1",
        "--out", str(out), "--recipe-out", str(recipe), "--max-drop", "100", "--min-gain", "1",
    ).output  # fmt: skip
    assert (
        "no recipe written: no target kept its top-1 within 100 points at a point that "
        "saves 100.0% of the latency" in " ".join(none.split())
    )
    assert not recipe.exists()
    bad = one_line(
        cli(
            "compress", "sensitivity", str(trained / "runs" / "tiny"), "--metric", "speed",
            code=2,
        ).output
    )  # fmt: skip
    assert "--metric must be accuracy or latency, got 'speed'" in bad
