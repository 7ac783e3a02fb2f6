"""``edgetrain grow-prune`` (PruneTrain phases with Net2Net growth towards a MAC target)
and ``edgetrain morphnet`` (the shrink/expand rounds as runs) end to end, and the
growth step itself: function kept, optimizer rebound, resume in the grown shape."""

from __future__ import annotations

import json

import pytest
import torch
from _output import one_line

from edgetrain.cost import analyze
from edgetrain.engine import Trainer, load_checkpoint
from edgetrain.models import create
from edgetrain.runs import load_trained_model

pytest.importorskip("torch_pruning")

pytestmark = pytest.mark.usefixtures("single_thread")

# a residual net with batch-norm on 8x8 digits: 8-channel stem, stages of 8 and 16
RECIPE = """
name: tinyres
epochs: 4
data:
  name: digits
  options: {test_fraction: 0.5}
  batch_size: 32
model:
  name: resnet_cifar
  options: {stages: 2, blocks: [1, 1], widths: [8, 16], input_size: 8, in_channels: 1}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""
QUIET = ("--no-progress", "--no-report")
SHAPE = (1, 8, 8)


def _net():
    torch.manual_seed(0)
    return create(
        "resnet_cifar", stages=2, blocks=[1, 1], widths=[8, 16], in_channels=1,
        num_classes=4, input_size=8,
    )  # fmt: skip


def _macs(model) -> int:
    return int(analyze(model, SHAPE, memory="layerwise").total().forward_macs)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tinyres.yaml"
    path.write_text(RECIPE)
    return path


def test_growth_keeps_the_function_and_rebinds_the_optimizer(make_blobs, tmp_path):
    from edgetrain.prune import GrowPrune

    net = _net()
    target = 1.6 * _macs(net)
    cb = GrowPrune(target, interval=1, cycles=1, noise=0.0)
    probe = make_blobs(16, seed=3).inputs
    outputs = []

    from edgetrain.engine import Callback

    class Before(Callback):
        def on_validation_end(self, trainer, model, metrics):
            model.eval()
            with torch.no_grad():
                outputs.append(model(probe))

    trainer = Trainer(
        net, make_blobs(64), val_data=make_blobs(32, seed=1), batch_size=16,
        callbacks=[Before(), cb], progress=False, device="cpu", run_dir=tmp_path / "run",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )  # fmt: skip
    trainer.fit(1)
    assert cb.history[0]["grown"], "nothing grew although the net is far below its target"
    grown = trainer.model
    grown.eval()
    with torch.no_grad():
        after = grown(probe)
    torch.testing.assert_close(after, outputs[0], rtol=1e-4, atol=1e-4)  # Net2Net, no noise
    assert _macs(grown) <= target
    # the optimizer trains exactly the model's parameters; unchanged shapes kept momentum
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in grown.parameters()}
    kept = [p for p in params if p in trainer.optimizer.state]
    assert kept and all(
        trainer.optimizer.state[p]["momentum_buffer"].shape == p.shape for p in kept
    )
    trainer.fit(2)  # trains on in the grown shape
    record = trainer.state.history[-1]
    assert record["meets_target"] == 1.0 and record["val_top1_within_target"] == record["val_top1"]
    # the checkpoint reloads in the grown shape
    reloaded = load_trained_model(tmp_path / "run" / "checkpoints" / "last.pt")
    assert _macs(reloaded) == _macs(grown)
    assert (tmp_path / "run" / "checkpoints" / "best_within_target.pt").is_file()


def test_above_the_target_the_weakest_channels_go_step_by_step(make_blobs):
    from edgetrain.prune import GrowPrune

    net = _net()
    start = _macs(net)
    cb = GrowPrune(0.5 * start, interval=1, max_step=0.3, cycles=0)
    trainer = Trainer(
        net, make_blobs(64), val_data=make_blobs(32, seed=1), batch_size=16, callbacks=[cb],
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        progress=False, device="cpu",
    )  # fmt: skip
    trainer.fit(1)
    first = _macs(trainer.model)
    assert 0.5 * start < first <= 0.7 * start  # at most 30 % of the MACs in one step
    assert trainer.state.history[-1]["meets_target"] == 0.0
    assert "val_top1_within_target" not in trainer.state.history[-1]
    trainer.fit(3)
    assert _macs(trainer.model) <= 0.5 * start and cb.grown == 0
    assert trainer.state.history[1]["meets_target"] == 1.0
    params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in trainer.model.parameters()}


def test_grow_prune_command_resumable_and_its_errors(cli, recipe, tmp_path):
    net_macs = _macs(load_trained_model_free(recipe))
    out = cli(
        "grow-prune", str(recipe), "--target-macs", str(int(1.5 * net_macs)), "--interval",
        "2", *QUIET,
    ).output  # fmt: skip
    run = tmp_path / "runs" / "tinyres-growprune"
    assert "best within" in out and "best_within_target.pt" in out.replace("\n", "")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["grown_layers"] >= 1
    best = load_checkpoint(run / "checkpoints" / "best_within_target.pt")
    assert best["trainer"]["epoch"] >= 1
    # resume to more epochs in the grown shape
    cli("train", "--resume", str(run), "--epochs", "5", "--no-progress")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_finished"] == 5
    bad = one_line(cli("grow-prune", str(recipe), "--target-macs", "1e6", "--growth", "0.5",
                       code=2).output)  # fmt: skip
    assert "grow-prune: growth must be > 1, got 0.5" in bad


def load_trained_model_free(recipe):
    """The recipe's model as built (no checkpoint)."""
    from edgetrain.runs import build_run_model, load_config

    return build_run_model(load_config(recipe))[0]


def test_morphnet_command_runs_rounds_and_the_proposal(cli, recipe, tmp_path):
    net_macs = _macs(load_trained_model_free(recipe))
    out = cli(
        "morphnet", str(recipe), "--budget", str(int(0.8 * net_macs)), "--rounds", "2",
        "--epochs", "1", "--strength", "1e-6", "--final-epochs", "1", "--no-progress",
    ).output  # fmt: skip
    assert "MorphNet (flops budget" in out and "proposal trained from scratch" in out
    result = json.loads((tmp_path / "runs" / "tinyres-morphnet.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert all(r["next_cost"] <= 0.8 * net_macs for r in result["rounds"])
    # round 2 trained the widths round 1 proposed
    assert result["rounds"][1]["widths"] == result["rounds"][0]["next_widths"]
    from edgetrain.prune import MorphNetStructure

    final = MorphNetStructure.of(load_trained_model(tmp_path / "runs" / "tinyres-morphnet-final"))
    assert final.widths() == result["proposal"]  # the proposal's shape, reloaded
    assert final.cost(final.widths(), "flops") == pytest.approx(result["final"]["cost"])
    bad = one_line(cli("morphnet", str(recipe), "--budget", "1e5", "--cost", "energy",
                       code=2).output)  # fmt: skip
    assert "--cost must be one of size, flops, got 'energy'" in bad
