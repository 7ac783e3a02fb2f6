"""``edgetrain prune-train`` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from _output import one_line

from edgetrain._yaml import safe_load

pytest.importorskip("torch_pruning")

pytestmark = pytest.mark.usefixtures("single_thread")

# A one-stage ResNet on 8x8 digits: residual groups and blocks that can be bypassed.
RECIPE = """
name: tiny
epochs: 3
data:
  name: digits
  options: {test_fraction: 0.8}
  batch_size: 32
model:
  name: resnet_cifar
  options: {stages: 1, blocks: [2], widths: [4], input_size: 8}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
"""

ARGS = ("--epochs", "2", "--interval", "1", "--ratio", "0.5", "--threshold", "0.05")


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def test_prune_train_trains_reports_and_prints_the_table(cli, recipe, tmp_path):
    out = cli("prune-train", str(recipe), *ARGS, "--runs-dir", "tmp", "--no-progress").output
    run = tmp_path / "tmp" / "tiny-prunetrain0.5"
    assert (run / "plots" / "channels.png").is_file()
    assert (run / "plots" / "pruning.png").is_file()
    assert "PruneTrain" in out
    for header in ("params", "inference MACs", "vs baseline"):
        assert header in out

    config = safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 2
    assert config["callbacks"][-1] == {
        "name": "prunetrain",
        "ratio": 0.5,
        "interval": 1,
        "threshold": 0.05,
        "stop_epoch": None,
        "penalty": "loss",
    }
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"channels", "params", "inference_macs", "train_macs"} <= r.keys()
        assert r["reconfigured"] is True
    assert records[-1]["params_after"] < records[0]["params"]  # the threshold pruned channels
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["architecture"]["pruned"] is True
    assert ckpt["architecture"]["name"] == "resnet_cifar"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_finished"] == 2


def test_prune_train_run_name_and_resume_of_a_pruned_run(cli, recipe, tmp_path):
    args = ("prune-train", "--config", str(recipe), *ARGS, "--name", "p", "--no-progress")
    args = (*args, "--no-report")
    cli(*args)
    run = tmp_path / "runs" / "p"
    assert not (run / "plots" / "channels.png").exists()
    cli("train", "--resume", str(run), "--epochs", "3", "--no-progress", "--no-report")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert "channels" in records[-1]


def test_a_recipe_with_prunetrain_keeps_its_one_callback_and_the_options_change_it(
    cli, recipe, tmp_path
):
    own = recipe.read_text() + "callbacks:\n  - {name: prunetrain, ratio: 0.6, interval: 2}\n"
    recipe.write_text(own)
    args = ("prune-train", str(recipe), "--epochs", "1", "--threshold", "0.05")
    cli(*args, "--no-progress", "--no-report")
    config = safe_load((tmp_path / "runs" / "tiny" / "config.yaml").read_text())
    assert config["callbacks"] == [
        {"name": "prunetrain", "ratio": 0.6, "interval": 2, "threshold": 0.05}
    ]


def test_prune_train_needs_exactly_one_recipe(cli, recipe):
    assert "pass a recipe" in one_line(cli("prune-train", code=2).output)
    out = cli("prune-train", str(recipe), "--config", "other.yaml", code=2).output
    assert "two recipes given" in one_line(out)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ratio", "1.5"], "ratio must be in (0, 1)"),
        (["--ratio", "0"], "ratio must be in (0, 1)"),
        (["--penalty", "foo"], "penalty must be one of loss, grad"),
    ],
)
def test_prune_train_bad_input_is_one_line_exit_2(cli, recipe, tmp_path, args, needle):
    result = cli("prune-train", str(recipe), *args, "--epochs", "1", "--no-progress", code=2)
    assert needle in one_line(result.output)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
