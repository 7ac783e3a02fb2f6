"""``edgetrain grow`` end to end: Net2Net growth of a trained run, the random-init and
from-scratch controls, config validation of ``model.grow``, and resuming a grown run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _output import one_line
from torch import nn

from edgetrain._yaml import safe_load
from edgetrain.runs import build_model, load_config, load_trained_model

pytest.importorskip("torch_pruning")

pytestmark = pytest.mark.usefixtures("single_thread")

# vgg_small on 8x8 digits: conv1..conv6 (16, 16, 32, 32, 64, 64 channels) and fc.
RECIPE = """
name: tiny
epochs: 1
data:
  name: digits
  options: {test_fraction: 0.8}
  batch_size: 32
model:
  name: vgg_small
  options: {input_size: 8}
optimizer: {name: sgd, lr: 0.02, momentum: 0.9}
"""

GROW = ("--widen", "conv2=24", "--deepen", "conv3")
OPS = [{"op": "widen", "layer": "conv2", "width": 24}, {"op": "deepen", "after": "conv3"}]
QUIET = ("--no-progress", "--no-report")
ONE_EPOCH = ("--epochs", "1", *QUIET)
SHAPE = (1, 8, 8)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture
def parent(cli, recipe, tmp_path) -> Path:
    """A trained run to grow: runs/tiny."""
    cli("train", str(recipe), *QUIET)
    return tmp_path / "runs" / "tiny"


def _config(run: Path) -> dict[str, Any]:
    return safe_load((run / "config.yaml").read_text())


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(5))


def _epoch0(run: Path) -> nn.Module:
    """The grown run's model before its first step, rebuilt from its config.yaml."""
    torch.manual_seed(0)
    model, _ = build_model(load_config(run / "config.yaml"), 10, SHAPE)
    return model.eval()


def _assert_grown_shapes(model: nn.Module) -> None:
    assert model.conv2.out_channels == 24 and model.conv3.base.in_channels == 24
    assert [n for n, _ in model.conv3.named_children()] == ["base", "relu", "conv"]
    assert model.conv3.conv.in_channels == model.conv3.conv.out_channels == 32


def test_grow_a_trained_run_with_net2net(cli, recipe, parent, tmp_path):
    cli("grow", str(recipe), "--from", str(parent.relative_to(tmp_path)), *GROW, *ONE_EPOCH)
    run = tmp_path / "runs" / "tiny-grown-net2net"
    config = _config(run)
    assert config["model"]["grow"] == OPS
    assert config["model"]["grow_init"] == "net2net"
    assert config["model"]["init_from"] == "runs/tiny"
    assert config["epochs"] == 1
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["architecture"]["grown"] == OPS

    # before training, the grown network computes the parent's function
    trained_parent = load_trained_model(parent)
    grown = _epoch0(run)
    _assert_grown_shapes(grown)
    x = _x()
    with torch.no_grad():
        before, after = trained_parent(x), grown(x)
    assert float((after - before).norm() / before.norm()) < 1e-5

    # the trained grown run reloads alone, in its grown shape, and runs
    reloaded = load_trained_model(run, prefer="last")
    _assert_grown_shapes(reloaded)
    assert sum(p.numel() for p in reloaded.parameters()) > sum(
        p.numel() for p in trained_parent.parameters()
    )
    with torch.no_grad():
        y = reloaded(x)
    assert y.shape == (6, 10) and torch.isfinite(y).all()
    assert [r["epoch"] for r in _records(run)] == [1]


def test_random_init_grows_the_same_shape_without_keeping_the_function(
    cli, recipe, parent, tmp_path
):
    cli("grow", str(recipe), "--from", "runs/tiny", *GROW, "--init", "random", *ONE_EPOCH)
    run = tmp_path / "runs" / "tiny-grown-random"
    config = _config(run)
    assert config["model"]["grow"] == OPS and config["model"]["grow_init"] == "random"
    grown = _epoch0(run)
    _assert_grown_shapes(grown)
    x = _x()
    with torch.no_grad():
        before, after = load_trained_model(parent)(x), grown(x)
    assert float((after - before).norm() / before.norm()) > 1e-3
    _assert_grown_shapes(load_trained_model(run))


def test_grow_without_from_trains_the_grown_architecture_from_scratch(cli, recipe, tmp_path):
    cli("grow", str(recipe), *GROW, "--name", "scratch", *ONE_EPOCH)
    run = tmp_path / "runs" / "scratch"
    config = _config(run)
    assert config["model"]["init_from"] is None
    assert config["model"]["grow"] == OPS
    model = load_trained_model(run)
    _assert_grown_shapes(model)
    with torch.no_grad():
        assert model(_x()).shape == (6, 10)


def test_grow_a_residual_net(cli, tmp_path):
    recipe = tmp_path / "res.yaml"
    recipe.write_text(
        RECIPE.replace("name: tiny", "name: res").replace(
            "name: vgg_small\n  options: {input_size: 8}",
            "name: resnet_cifar\n  options: {stages: 1, blocks: [1], widths: [4], input_size: 8}",
        )
    )
    cli("train", str(recipe), *QUIET)
    grow = ("--widen", "conv1=6", "--deepen", "layer1.0")
    cli("grow", str(recipe), "--from", "runs/res", *grow, *ONE_EPOCH)
    run = tmp_path / "runs" / "res-grown-net2net"
    grown = _epoch0(run)
    assert len(grown.layer1) == 2 and grown.conv1.out_channels == 6
    assert grown.layer1[1].conv1.in_channels == 6  # the residual channels grew together
    x = _x()
    with torch.no_grad():
        before, after = load_trained_model(tmp_path / "runs" / "res")(x), grown(x)
    assert float((after - before).norm() / before.norm()) < 1e-5
    reloaded = load_trained_model(run)
    assert len(reloaded.layer1) == 2 and reloaded.conv1.out_channels == 6


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--widen", "conv2"], "--widen 'conv2' is not LAYER=WIDTH; e.g. --widen conv2=32"),
        (["--widen", "conv2=-3"], "is not LAYER=WIDTH"),
        (["--widen", "nosuch=32"], "the model has no layer 'nosuch'; choose one of: conv1"),
        (["--deepen", "nosuch"], "the model has no layer 'nosuch'"),
        (["--deepen", "pool1"], "'pool1' is a MaxPool2d"),
        (["--widen", "pool1=32"], "widen 'pool1': it is a MaxPool2d, which has no channels"),
        (["--widen", "fc=12"], "'fc' feeds the model's output directly"),
        (["--widen", "conv2=8"], "it already has 16 channels; give a width above 16"),
        ([], "nothing to grow; pass --widen LAYER=WIDTH and/or --deepen LAYER"),
        (["--widen", "conv2=24", "--init", "bogus"], "grow_init"),
        (["--widen", "conv2=24", "--from", "runs/nosuch"], "'runs/nosuch' does not exist"),
    ],
)
def test_bad_grow_input_is_one_line_exit_2(cli, recipe, tmp_path, args, needle):
    result = cli("grow", str(recipe), *args, *ONE_EPOCH, code=2)
    assert needle in one_line(result.output)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # nothing left behind


def test_an_unknown_grow_op_in_a_recipe_names_the_op_and_the_choices(cli, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        RECIPE.replace("options: {input_size: 8}", "options: {input_size: 8}\n  grow: [{op: nope}]")
    )
    result = cli("train", str(recipe), *QUIET, code=2)
    line = one_line(result.output)
    assert "unknown op 'nope'" in line and "choose one of: deepen, widen" in line
    assert "model.grow" in line
    bad_init = RECIPE.replace(
        "options: {input_size: 8}", "options: {input_size: 8}\n  grow_init: zeros"
    )
    recipe.write_text(bad_init)
    assert "grow_init" in one_line(cli("train", str(recipe), *QUIET, code=2).output)


def test_a_recipe_with_model_grow_trains_the_grown_model(cli, tmp_path):
    recipe = tmp_path / "grown.yaml"
    recipe.write_text(
        RECIPE.replace(
            "options: {input_size: 8}",
            "options: {input_size: 8}\n  grow: [{op: widen, layer: conv4, width: 40}]",
        )
    )
    cli("train", str(recipe), *QUIET)
    model = load_trained_model(tmp_path / "runs" / "tiny")
    assert model.conv4.out_channels == 40 and model.conv5.in_channels == 40


def test_a_grown_run_resumes_where_an_uninterrupted_one_ends(cli, recipe, parent, tmp_path):
    common = ("grow", str(recipe), "--from", "runs/tiny", *GROW, *QUIET)
    cli(*common, "--epochs", "2", "--name", "full")
    cli(*common, "--epochs", "1", "--name", "split")  # stopped after one epoch
    split = tmp_path / "runs" / "split"
    shutil.rmtree(parent)  # the resumed run no longer needs its parent
    cli("train", "--resume", "runs/split", "--epochs", "2", *QUIET)
    assert [r["epoch"] for r in _records(split)] == [1, 2]
    assert _config(split)["epochs"] == 2 and _config(split)["model"]["grow"] == OPS
    full, resumed = (
        load_trained_model(tmp_path / "runs" / name, prefer="last") for name in ("full", "split")
    )
    _assert_grown_shapes(resumed)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith("_time")}  # noqa: E731
    assert [strip(r) for r in _records(split)] == [
        strip(r) for r in _records(tmp_path / "runs" / "full")
    ]
