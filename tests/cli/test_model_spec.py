"""A model of the user's own, named by file, through train, cost, export, compress and
report, and reopened in a fresh process from another folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

NETS = """
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):  # depthwise-separable, functional activations
    def __init__(self, c_in, c_out):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.relu(self.bn2(self.pw(F.relu(self.bn1(self.dw(x))))))


def ds_net(in_channels=1, num_classes=10, width=8):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), Block(width, 2 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
"""

RECIPE = """
name: mine
epochs: 1
data: {name: digits, batch_size: 32}
model: {name: ./nets.py:ds_net, options: {width: 8}}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""

COMPRESS = """
version: 1
pruners:
  p: {method: l1_filter, sparsity: 0.5, layers: ["2.pw"]}
export: {opset: 17}
"""


def _edgetrain(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "edgetrain.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_model_file_through_every_command(cli, tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "mine.yaml").write_text(RECIPE)
    (tmp_path / "compress.yaml").write_text(COMPRESS)
    out = cli("cost", "./nets.py:ds_net", "--input", "1x8x8", "--format", "json").output
    assert json.loads(out)["inference"]["forward_macs"] > 0
    cli("train", "mine.yaml", "--no-progress", "--no-report")
    config = yaml.safe_load((tmp_path / "runs" / "mine" / "config.yaml").read_text())
    assert config["model"]["name"] == f"{tmp_path / 'nets.py'}:ds_net"
    assert len(config["model"]["sha256"]) == 64

    # A fresh process in another folder reopens the run for export, compress and resume.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = str(tmp_path / "runs" / "mine")
    recipe = str(tmp_path / "compress.yaml")
    outputs = _in_one_fresh_process(
        [
            ["export", run, "--out", "m.onnx"],
            ["compress", run, "--recipe", recipe, "--out", "c"],
            ["train", "--resume", run, "--epochs", "2", "--no-progress", "--no-report"],
        ],
        cwd=elsewhere,
    )
    assert "input Nx1x8x8" in outputs[0] and (elsewhere / "m.onnx").is_file()
    report = json.loads((elsewhere / "c" / "compress.json").read_text())
    assert report["params_after"] < report["params_before"]
    assert "changed since" not in "".join(outputs)

    (tmp_path / "nets.py").write_text(NETS + "\n# edited\n")
    done = _edgetrain("export", run, "--out", "m2.onnx", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert f"warning: model file '{tmp_path / 'nets.py'}' changed since the run" in done.stderr


RUNNER = """
import json, sys
from typer.testing import CliRunner
from edgetrain.cli import app
outputs = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        sys.exit(f"{args[0]} exited {result.exit_code}: {result.output[-2000:]}")
    outputs.append(result.output)
print(json.dumps(outputs))
"""


def _in_one_fresh_process(commands: list[list[str]], cwd: Path) -> list[str]:
    """Run several commands in one new Python process (one torch import)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(commands)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


NPZ_RECIPE = """
name: npz
epochs: 2
data: {name: arrays, options: {path: data/train.npz, test_path: data/test.npz}, batch_size: 16}
model: {name: ./nets.py:ds_net, options: {width: 8}}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""

SWEEP = """
name: s
method: random
metric: {name: latency_ms}
parameters:
  p.sparsity: {min: 0.0, max: 0.75}
budget: {trials: 2}
recipe: sweep-recipe.yaml
model: runs/npz
runtime: {runs: 5, repeats: 1, warmup: 1}
"""


def _npz(path: Path, n: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 2, 8, 8)) + y.reshape(-1, 1, 1, 1)
    np.savez(path, x=x.astype(np.float32), y=y)


def test_own_arrays_and_own_model_through_train_and_sweep(cli, tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "data").mkdir()
    _npz(tmp_path / "data" / "train.npz", 48, 0)
    _npz(tmp_path / "data" / "test.npz", 24, 1)
    (tmp_path / "npz.yaml").write_text(NPZ_RECIPE)
    cli("train", "npz.yaml", "--no-progress", "--no-report")
    from edgetrain.engine import load_checkpoint

    arch = load_checkpoint(tmp_path / "runs" / "npz" / "checkpoints" / "last.pt")["architecture"]
    # channels and classes come from the arrays, as for a zoo model
    assert arch["options"] == {"width": 8, "in_channels": 2, "num_classes": 3}
    assert arch["input_shape"] == [2, 8, 8] and arch["data"] == "arrays"
    (tmp_path / "sweep-recipe.yaml").write_text(
        "version: 1\npruners:\n  p: {method: l1_filter, sparsity: 0.5, layers: ['2.pw']}\n"
    )
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    done = _edgetrain("sweep", "run", "sweep.yaml", "--no-progress", "--no-report", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = [
        json.loads(p.read_text())
        for p in (tmp_path / "runs" / "s" / "trials").glob("*/metrics.json")
    ]
    assert len(metrics) == 2 and all(m["latency_ms"] > 0 for m in metrics)
    config = yaml.safe_load((tmp_path / "runs" / "npz" / "config.yaml").read_text())
    assert config["data"]["options"]["path"] == str(tmp_path / "data" / "train.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)  # the cli fixture restores the folder
    cli("report", str(tmp_path / "runs" / "npz"), "--scenario")


def test_a_run_trained_from_python_is_exported_compressed_and_reported(cli, tmp_path: Path):
    import torch

    from edgetrain import data, models
    from edgetrain.engine import Trainer

    torch.manual_seed(0)
    net = models.create("vgg_small", in_channels=1, num_classes=10, input_size=8)
    train, test = data.create("digits", "train"), data.create("digits", "test")
    Trainer(
        net, train, val_data=test, batch_size=64, run_dir=tmp_path / "runs" / "py", progress=False
    ).fit(1)
    out = cli("export", "runs/py", "--out", "py.onnx").output
    assert "input Nx1x8x8" in out
    refused = cli("compress", "runs/py", "--recipe", "vgg-small-l1", code=2).output
    assert "trained from Python and its config.yaml names no data set" in refused
    cli(
        "compress",
        "runs/py",
        "--recipe",
        "vgg-small-l1",
        "--data",
        "digits",
        "--out",
        "c",
        "--no-finetune",
        "--no-report",
    )
    report = json.loads((tmp_path / "c" / "compress.json").read_text())
    assert report["params_after"] < report["params_before"] and report["top1_before"] > 0
    assert "report" in cli("report", "runs/py").output
