"""``edgetrain cost``: tables, exports and one-line errors through the CLI."""

from __future__ import annotations

import json

import pytest

from edgetrain.cost import load_profile


def test_cost_table_with_a_cycle_of_plans(cli):
    out = cli(
        "cost",
        "vgg_small",
        "--input",
        "3x32x32",
        "--plan",
        "conv5,conv6,fc",
        "--plan",
        "fc",
        "--profile",
        "cortex-m4-fp32",
    ).output
    for needle in (
        "per layer",
        "per step",
        "conv5,conv6,fc",
        "average",
        "peak",
        "inference",
        "Total mult-adds (torchinfo count): 9,947,146",
        "82,330",
    ):
        assert needle in out, needle
    # conv6 weight gradient of the worked check
    assert "1,982,464" in out


def test_cost_trainable_shorthand_and_json(cli):
    data = json.loads(cli("cost", "vgg_small", "--trainable", "last:2", "--format", "json").output)
    assert data["steps"][0]["backward_macs"] == 2_054_218
    assert data["params"] == 82_330
    assert data["cycle"]["steps"] == 1
    assert data["layers"][-1]["name"] == "fc" and data["layers"][-1]["trained"]


def test_cost_memory_accountings_and_the_timeline_plot(cli, tmp_path):
    """The allocator peak of a partial plan counts the input batch and the frozen
    layers' activations the layerwise formula leaves out; the timeline is a PNG."""
    args = ["cost", "vgg_small", "--trainable", "last:2", "--batch-size", "32"]
    allocator = json.loads(
        cli(*args, "--format", "json", "--plot", "t.png").output.split("\n", 1)[1]
    )
    layerwise = json.loads(cli(*args, "--format", "json", "--memory", "layerwise").output)
    (step,) = allocator["steps"]
    assert step["memory_method"] == "allocator" and step["memory_peak_at"]
    assert layerwise["steps"][0]["memory_method"] == "layerwise"
    assert step["memory_reuse_bytes"] > layerwise["steps"][0]["memory_reuse_bytes"]
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = cli("cost", "vgg_small", "--trainable", "last:2").output
    assert "Training step 'last:2' peak memory (MB, allocator):" in out


def test_cost_dense_convention_counts_every_tap(cli):
    """vgg_small: 9,889,792 dense MACs, fvcore's and FlopCounterMode's count."""
    data = json.loads(cli("cost", "vgg_small", "--macs", "dense", "--format", "json").output)
    assert data["inference"]["forward_macs"] == 9_889_792


def test_cost_csv_has_one_row_per_layer(cli):
    out = cli("cost", "kws_cnn", "--format", "csv", "-o", "num_classes=8").output
    lines = out.strip().splitlines()
    assert lines[0].startswith("name,kind,op")
    assert [ln.split(",")[0] for ln in lines[1:]][:2] == ["conv1", "relu1"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["vgg_smal"], "unknown model 'vgg_smal'"),
        (["vgg_small", "--input", "3x32"], "cannot take"),
        (["vgg_small", "--input", "3by32"], "must look like 3x32x32"),
        (["vgg_small", "--plan", "conv9"], "'conv9' matches no module"),
        (["vgg_small", "--trainable", "last:99"], "N must be 1..7"),
        (["vgg_small", "--profile", "nope"], "unknown profile 'nope'"),
        (["vgg_small", "--optimizer", "lion"], "unknown optimizer 'lion'"),
        (["vgg_small", "--format", "xml"], "unknown --format"),
        (["vgg_small", "--memory", "exact"], "unknown --memory 'exact'; choose one of"),
        (["vgg_small", "--macs", "flops"], "unknown --macs 'flops'; choose one of"),
        (["vgg_small", "--plot", "blocker/t.png"], "the folder of --plot 'blocker/t.png'"),
    ],
)
def test_cost_bad_input_is_one_line_exit_2(cli, tmp_path, args, needle):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    result = cli("cost", *args, code=2)
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_models_lists_forward_macs(cli):
    out = cli("models", "vgg_small").output
    assert "9,063,626" in out  # border-aware forward MACs at 3x32x32


def test_calibrate_writes_a_usable_profile(cli, tmp_path):
    out = cli("cost", "calibrate", "--quick", "--out", "host.yaml").output
    assert "GMAC/s" in out
    profile = load_profile(tmp_path / "host.yaml")
    assert profile.name == "host-cpu" and profile.peak_macs_per_s > 1e8
    data = json.loads(cli("cost", "vgg_small", "--profile", "host.yaml", "--format", "json").output)
    assert data["profile"] == "host-cpu"
    assert data["conventional"]["estimated_seconds"] > 0


def test_calibrate_anchored_on_a_model(cli, tmp_path):
    out = cli(
        "cost", "calibrate", "--quick", "--out", "kws.yaml", "--model", "kws_cnn",
        "--trainable", "last:2",
    ).output  # fmt: skip
    assert "anchored on kws_cnn (last:2, batch 1): per-step offset" in out
    assert "layer terms conv forward x" in out and "linear weight_grad x" in out
    profile = load_profile(tmp_path / "kws.yaml")
    assert "measured steps of KWSCNN 1x32x32 last:2" in profile.description


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--input", "1x32x32"], "need --model"),
        (["--anchor", "both"], "--anchor 'both': choose one of layers, scale, offset"),
        (["--anchor", "offset"], "need --model"),
        (["--model", "kws_cnn", "--trainable", "last:9"], "last:9"),
        (["--model", "kws_cnn", "--input", "1x0"], "--input '1x0'"),
    ],
)
def test_calibrate_anchoring_errors_are_one_line(cli, args, needle):
    result = cli("cost", "calibrate", "--quick", *args, code=2)
    assert needle in result.output


def test_cost_on_a_microcontroller_says_what_fits(cli):
    out = cli("cost", "ds_cnn", "--device", "stm32f746", "--trainable", "last:2").output
    assert "fit on stm32f746" in out and "memory: tensors" in out
    assert "inference" in out and "last:2" in out and "yes" in out
    data = json.loads(cli("cost", "ds_cnn", "--device", "stm32f303k8", "--format", "json").output)
    assert [f["fits"] for f in data["fit"]] == [False, False]  # inference, all
    assert data["fit"][0]["flash_needed"] == data["inference"]["weights_bytes"]
    assert data["fit"][0]["flash_margin"] < 0
    out = cli("cost", "ds_cnn", "--profile", "reference").output
    assert "fit on" not in out  # a profile without memory sizes says nothing of fitting


def test_schedule_suggest_takes_the_device_memory_as_budget(cli):
    out = cli("schedule", "suggest", "--model", "ds_cnn", "--device", "stm32f746").output
    assert "and stm32f746" in out and "SRAM left" in out
    result = cli("schedule", "suggest", "--model", "fcn1d", "--device", "stm32f303k8", code=2)
    assert "no schedule fits these budgets and the memory of stm32f303k8" in result.output
