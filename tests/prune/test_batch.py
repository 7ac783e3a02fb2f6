"""Adaptive batch size: the cost-model memory estimate, the 1/b = a*P + c predictor, and
the AdaptiveBatch callback growing the batch (and the LR) as the model shrinks."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgetrain import models
from edgetrain._yaml import safe_load
from edgetrain.cli import app
from edgetrain.engine import Callback, Trainer
from edgetrain.engine import precision as precision_module
from edgetrain.errors import ConfigError

pytest.importorskip("torch_pruning")

from edgetrain.prune import (  # noqa: E402
    AdaptiveBatch,
    BatchPredictor,
    PruneTrain,
    max_batch_estimate,
    max_batch_search,
    reconfigure,
)
from edgetrain.prune.batch import step_memory_bytes  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (1, 8, 8)
LR = 0.1


def _vgg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("vgg_small", in_channels=1, num_classes=4, input_size=8)


def _zero_channels(model: nn.Module) -> None:
    """Zero conv1's and conv2's channels 4.. (their weights, biases and the next conv's
    input weights): a reconfiguration removes them."""
    with torch.no_grad():
        for this, nxt in ((model.conv1, model.conv2), (model.conv2, model.conv3)):
            this.weight[4:] = 0
            this.bias[4:] = 0
            nxt.weight[:, 4:] = 0


def _shrunk() -> nn.Module:
    """The model after Shrink: conv1 and conv2 down to 4 channels."""
    net = _vgg()
    _zero_channels(net)
    reconfigure(net)
    return net


# ------------------------------------------------------------------ memory estimate
def test_step_memory_grows_with_the_batch_but_not_in_proportion():
    """Weights and gradients do not grow with the batch, activations do; the kernels
    chosen (and their scratch) change with it, so the peak is not affine."""
    net = _vgg()
    m1, m2, m4, m64 = (step_memory_bytes(net, SHAPE, b) for b in (1, 2, 4, 64))
    assert 0 < m1 < m2 < m4 < m64 < 64 * m1


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_max_batch_estimate_is_the_largest_batch_within_the_budget(optimizer):
    net = _vgg()
    for budget in (
        step_memory_bytes(net, SHAPE, 1, optimizer),  # exactly one sample
        step_memory_bytes(net, SHAPE, 13, optimizer) + 5,  # a little above 13
        step_memory_bytes(net, SHAPE, 14, optimizer) - 1,  # just below 14
    ):
        b = max_batch_estimate(net, SHAPE, budget, optimizer)
        assert step_memory_bytes(net, SHAPE, b, optimizer) <= budget
        assert step_memory_bytes(net, SHAPE, b + 1, optimizer) > budget
    exact = step_memory_bytes(net, SHAPE, 13, optimizer)
    assert max_batch_estimate(net, SHAPE, exact, optimizer) == 13


def test_max_batch_estimate_respects_its_limit():
    net = _vgg()
    big = step_memory_bytes(net, SHAPE, 500)
    assert max_batch_estimate(net, SHAPE, big, limit=100) == 100


def test_a_budget_below_one_sample_is_a_config_error():
    net = _vgg()
    one = step_memory_bytes(net, SHAPE, 1)
    with pytest.raises(ConfigError, match="below one sample"):
        max_batch_estimate(net, SHAPE, one - 1)


def test_a_smaller_model_fits_a_larger_batch_in_the_same_budget():
    big = _vgg()
    budget = step_memory_bytes(big, SHAPE, 8)
    assert max_batch_estimate(big, SHAPE, budget) == 8
    assert max_batch_estimate(_shrunk(), SHAPE, budget) > 8


def test_the_guarded_search_is_cuda_only():
    with pytest.raises(ConfigError, match="CUDA"):
        max_batch_search(_vgg(), SHAPE, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_guarded_search_finds_a_batch_that_trains_on_cuda():
    net = _vgg()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    b = max_batch_search(net, SHAPE, device="cuda", start=8, limit=64)
    assert b == 64  # a tiny net fits the cap; the search stops there
    assert next(net.parameters()).device.type == "cpu"  # the original is untouched
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------ predictor
def test_predictor_recovers_a_and_c_from_exact_points_and_predicts():
    a, c = 1e-6, 2e-3
    p = BatchPredictor()
    # 1/b = a*P + c exactly: b = 250 at P=2000, 200 at 3000, 125 at 6000
    for params, batch in ((2000, 250), (3000, 200), (6000, 125)):
        p.add(params, batch)
    assert p.ready
    fit_a, fit_c = p.coefficients()
    assert fit_a == pytest.approx(a, rel=1e-9)
    assert fit_c == pytest.approx(c, rel=1e-9)
    assert p.predict(4000) == math.floor(1 / (a * 4000 + c))  # 166
    assert p.predict(3000) == 200  # an exact point comes back exactly
    assert p.predict(0) == 500


def test_predictor_needs_two_distinct_parameter_counts():
    p = BatchPredictor()
    with pytest.raises(ConfigError, match="two different parameter counts"):
        p.coefficients()
    p.add(1000, 100)
    p.add(1000, 90)
    assert not p.ready
    with pytest.raises(ConfigError, match="two different parameter counts"):
        p.predict(500)
    p.add(500, 200)
    assert p.ready


def test_predictor_gives_a_huge_batch_where_the_fit_has_no_limit():
    p = BatchPredictor()
    p.add(1000, 100)
    p.add(500, 200)  # a = 1e-5, c = 0: 1/b <= 0 for P <= 0
    assert p.predict(0) >= 1 << 20


# ------------------------------------------------------------------ callback
class Shrink(Callback):
    """After epoch 1, remove all but 4 channels of conv1 and conv2 (reconfigure by hand)."""

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        if trainer.state.epoch != 1:
            return
        _zero_channels(model)
        result = reconfigure(model, trainer.optimizer)
        assert result.channels_after["conv1"] == result.channels_after["conv2"] == 4
        trainer.replace_model(model)


def _trainer(data: Any, adaptive: AdaptiveBatch, scheduler: Any = None, **kw: Any) -> Trainer:
    """vgg_small at batch 8 that Shrink narrows after epoch 1, then AdaptiveBatch."""
    return Trainer(
        _vgg(),
        data,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9),
        scheduler=scheduler,
        batch_size=8,
        progress=False,
        seed=3,
        callbacks=[Shrink(), adaptive],
        **{"device": "cpu", **kw},
    )


@pytest.fixture
def train_data(make_blobs):
    return make_blobs(64, seed=0)


def _expected_batch(trainer: Trainer, old: int, multiple_of: int, max_batch: int = 1024) -> int:
    budget = step_memory_bytes(_vgg(), SHAPE, old, "momentum")
    b = min(max_batch_estimate(trainer.model, SHAPE, budget, "momentum"), max_batch)
    return max(old, b - b % multiple_of)


def test_the_batch_grows_after_the_model_shrinks_and_the_lr_follows_linearly(train_data):
    adaptive = AdaptiveBatch(multiple_of=4)
    trainer = _trainer(train_data, adaptive)
    trainer.fit(3)
    r1, r2, r3 = trainer.state.history
    assert r1["batch_size"] == 8 and r1["lr"] == pytest.approx(LR)
    new = r2["batch_size"]
    assert new > 8 and new % 4 == 0
    assert new == _expected_batch(trainer, 8, 4)
    assert r2["batch_size_from"] == 8
    assert r2["lr"] == pytest.approx(LR * new / 8)
    assert r2["step"] - r1["step"] == math.ceil(64 / new)  # fewer, larger steps
    # nothing changed since: the batch and the LR stay
    assert r3["batch_size"] == new and r3["lr"] == pytest.approx(r2["lr"])
    assert "batch_size_from" not in r3
    assert trainer.batch_size == new


def test_sqrt_and_none_scaling(train_data):
    sqrt = _trainer(train_data, AdaptiveBatch(multiple_of=4, lr_scaling="sqrt"))
    sqrt.fit(2)
    none = _trainer(train_data, AdaptiveBatch(multiple_of=4, lr_scaling="none"))
    none.fit(2)
    for trainer in (sqrt, none):
        assert trainer.state.history[1]["batch_size"] > 8
    new = sqrt.state.history[1]["batch_size"]
    assert sqrt.state.history[1]["lr"] == pytest.approx(LR * math.sqrt(new / 8))
    assert none.state.history[1]["lr"] == pytest.approx(LR)


def test_the_lr_of_a_per_epoch_scheduler_follows_the_batch(train_data):
    adaptive = AdaptiveBatch(multiple_of=4)
    sched = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    trainer = _trainer(train_data, adaptive, scheduler=sched)
    trainer.fit(3)
    r1, r2, r3 = trainer.state.history
    factor = r2["batch_size"] / 8
    assert factor > 1
    assert r1["lr"] == pytest.approx(LR)
    assert r2["lr"] == pytest.approx(LR * 0.5 * factor)
    assert r3["lr"] == pytest.approx(LR * 0.25 * factor)


def test_multiple_of_and_max_batch_bound_the_new_batch(train_data):
    trainer = _trainer(train_data, AdaptiveBatch(multiple_of=8, max_batch=12))
    trainer.fit(2)
    # the estimate is above 12; capped to 12, then rounded down to a multiple of 8
    assert _expected_batch(trainer, 8, 1) > 12
    assert trainer.state.history[1]["batch_size"] == 8
    assert trainer.state.history[1]["lr"] == pytest.approx(LR)

    trainer = _trainer(train_data, AdaptiveBatch(multiple_of=5))
    trainer.fit(2)
    new = trainer.state.history[1]["batch_size"]
    assert new > 8 and new % 5 == 0 and new == _expected_batch(trainer, 8, 5)


def test_the_batch_never_shrinks(train_data):
    """A budget smaller than what the first batch needs never lowers the batch."""
    shrunk = _vgg()
    _zero_channels(shrunk)
    reconfigure(shrunk)
    # the narrowed net fits 4 samples in this budget, not the 8 it trains with
    budget_mb = step_memory_bytes(shrunk, SHAPE, 4) / 2**20
    trainer = _trainer(train_data, AdaptiveBatch(budget_mb=budget_mb, multiple_of=1))
    trainer.fit(2)
    assert [r["batch_size"] for r in trainer.state.history] == [8, 8]
    assert trainer.state.history[1]["lr"] == pytest.approx(LR)


def test_a_per_step_scheduler_is_refused_with_one_clear_error(train_data):
    def onecycle(opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=LR, epochs=2, steps_per_epoch=steps_per_epoch
        )

    trainer = _trainer(train_data, AdaptiveBatch(), scheduler=onecycle)
    with pytest.raises(ConfigError, match="per-step LR schedule") as info:
        trainer.fit(2)
    assert "\n" not in str(info.value)
    assert trainer.state.epoch == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"lr_scaling": "cube"}, "lr_scaling must be one of linear, sqrt, none"),
        ({"multiple_of": 0}, "max_batch and multiple_of must be >= 1"),
        ({"max_batch": 0}, "max_batch and multiple_of must be >= 1"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        AdaptiveBatch(**kwargs)


def test_a_model_without_input_shape_is_refused(train_data):
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    trainer = Trainer(
        Plain(), train_data, device="cpu", progress=False, callbacks=[AdaptiveBatch()]
    )
    with pytest.raises(ConfigError, match="input_shape"):
        trainer.fit(1)


def test_state_dict_round_trip(train_data):
    adaptive = AdaptiveBatch(multiple_of=4)
    _trainer(train_data, adaptive).fit(2)
    state = adaptive.state_dict()
    assert state["params"] == sum(p.numel() for p in _shrunk().parameters())
    assert len(state["points"]) == 1 and state["batch_size"] > 8
    other = AdaptiveBatch()
    other.load_state_dict(copy.deepcopy(state))
    assert other.state_dict() == state
    assert other.predictor.points == [tuple(p) for p in state["points"]]


# ------------------------------------------------------------------ with PruneTrain
class ZeroChannels(Callback):
    """At the end of epoch 1, zero conv1's and conv2's channels 4..; PruneTrain, which
    runs after this callback, removes them."""

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        if trainer.state.epoch == 1:
            _zero_channels(model)


def _prune_trainer(data: Any, run_dir: Any) -> Trainer:
    return Trainer(
        _vgg(),
        data,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9),
        batch_size=8,
        device="cpu",
        progress=False,
        seed=3,
        run_dir=run_dir,
        callbacks=[
            ZeroChannels(),
            PruneTrain(ratio=0.1, interval=1, threshold=1e-6),
            AdaptiveBatch(multiple_of=4),
        ],
        architecture={
            "name": "vgg_small",
            "options": {"in_channels": 1, "num_classes": 4, "input_size": 8},
        },
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_new_batch_comes_from_the_guarded_search(train_data):
    adaptive = AdaptiveBatch(max_batch=64, multiple_of=4)
    trainer = _trainer(train_data, adaptive, device="cuda")
    trainer.fit(2)
    assert [r["batch_size"] for r in trainer.state.history] == [8, 64]  # the cap fits
    assert trainer.state.history[1]["lr"] == pytest.approx(LR * 64 / 8)
    assert adaptive.predictor.points == [(sum(p.numel() for p in trainer.model.parameters()), 64)]


def test_adaptive_batch_after_prunetrain_and_an_exact_resume(train_data, tmp_path):
    full = _prune_trainer(train_data, tmp_path / "full")
    full.fit(3)
    sizes = [r["batch_size"] for r in full.state.history]
    assert sizes[0] == 8 and sizes[1] > 8 and sizes[1] % 4 == 0
    assert sizes == sorted(sizes)  # never smaller
    assert full.state.history[1]["params"] < full.state.history[0]["params"]

    run = tmp_path / "split"
    _prune_trainer(train_data, run).fit(2)
    resumed = _prune_trainer(train_data, run)
    resumed.load_checkpoint(run / "checkpoints" / "last.pt")
    resumed.fit(3)
    assert resumed.state.history[-1]["batch_size"] == sizes[-1]
    assert resumed.state.history[-1]["lr"] == pytest.approx(full.state.history[-1]["lr"])
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------ command line
PRUNE_RECIPE = """
name: res
epochs: 4
data:
  name: digits
  options: {test_fraction: 0.8}
  batch_size: 32
model:
  name: resnet_cifar
  options: {stages: 1, blocks: [2], widths: [4], input_size: 8}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
"""
PRUNE_ARGS = ("--interval", "1", "--ratio", "0.5", "--threshold", "0.05", "--no-progress")


def _cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Any]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "res.yaml").write_text(PRUNE_RECIPE)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["prune-train", "res.yaml", *PRUNE_ARGS, *args])


def test_prune_train_with_adaptive_batch_and_precision(monkeypatch, tmp_path):
    monkeypatch.setattr(precision_module, "speedup_note", lambda *_: None)
    run_cli = _cli(monkeypatch, tmp_path)
    # 6 epochs: enough pruning to grow the batch whatever bf16 kernels the CPU has (how
    # many channels die by epoch 4 depends on them)
    result = run_cli(
        "--adaptive-batch", "--precision", "bf16-mixed", "--no-report", "--epochs", "6"
    )
    assert result.exit_code == 0, (result.output, result.exception)
    run = tmp_path / "runs" / "res-prunetrain0.5"
    config = safe_load((run / "config.yaml").read_text())
    assert config["precision"] == "bf16-mixed"
    assert [c["name"] for c in config["callbacks"]] == ["prunetrain", "adaptive-batch"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sizes = [r["batch_size"] for r in records]
    assert sizes[0] == 32 and sizes == sorted(sizes) and all(b % 8 == 0 for b in sizes)
    grown = [r for r in records if "batch_size_from" in r]
    assert grown, sizes  # the model shrank enough for a larger batch
    for r in grown:
        assert r["params"] < records[0]["params"]
        assert r["lr"] == pytest.approx(0.1 * r["batch_size"] / 32)


def test_prune_train_adaptive_batch_refuses_onecycle_in_one_line(monkeypatch, tmp_path):
    run_cli = _cli(monkeypatch, tmp_path)
    result = run_cli("--adaptive-batch", "--set", "scheduler.name=onecycle", "--no-report")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "per-step LR schedule (onecycle)" in lines[0], result.output
    assert not (tmp_path / "runs" / "res-prunetrain0.5").exists()  # no folder left behind
