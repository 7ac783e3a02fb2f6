"""Tests of the training loop: learning, hooks, metrics, schedulers and frozen layers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetrain import models
from edgetrain.engine import Callback, EarlyStopping, Trainer, build_scheduler

pytestmark = pytest.mark.usefixtures("single_thread")


def _mlp(in_features: int, num_classes: int, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, num_classes)
        )


def _sgd(lr: float, **kw: Any):  # noqa: ANN202 - an optimizer factory
    return lambda params: torch.optim.SGD(params, lr=lr, **kw)


def _trainer(model: nn.Module, train: Any, **kw: Any) -> Trainer:
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 8)
    return Trainer(model, train, **kw)


class Recorder(Callback):
    """Records every hook call by name."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.models: set[int] = set()
        self.validation: list[dict[str, float]] = []
        self.epoch_records: list[dict[str, Any]] = []

    def _hit(self, name: str, model: nn.Module) -> None:
        self.calls.append(name)
        self.models.add(id(model))

    def on_fit_start(self, trainer, model):
        self._hit("on_fit_start", model)

    def on_fit_end(self, trainer, model):
        self._hit("on_fit_end", model)

    def on_epoch_start(self, trainer, model):
        assert model.training
        self._hit("on_epoch_start", model)

    def on_epoch_end(self, trainer, model):
        self.epoch_records.append(dict(trainer.state.last_record))
        self._hit("on_epoch_end", model)

    def on_batch_start(self, trainer, model, batch, index):
        self._hit("on_batch_start", model)

    def before_forward(self, trainer, model, inputs):
        self._hit("before_forward", model)

    def on_loss(self, trainer, model, loss):
        self._hit("on_loss", model)

    def after_backward(self, trainer, model):
        assert all(p.grad is not None for p in model.parameters())
        self._hit("after_backward", model)

    def before_optimizer_step(self, trainer, model, optimizer):
        self._hit("before_optimizer_step", model)

    def on_batch_end(self, trainer, model, outputs, loss):
        self._hit("on_batch_end", model)

    def on_validation_end(self, trainer, model, metrics):
        self.validation.append(dict(metrics))
        self._hit("on_validation_end", model)

    def on_exception(self, trainer, model, error):
        self._hit("on_exception", model)


BATCH_HOOKS = [
    "on_batch_start",
    "before_forward",
    "on_loss",
    "after_backward",
    "before_optimizer_step",
    "on_batch_end",
]


# ------------------------------------------------------------------------ learning
def test_loss_falls_and_accuracy_rises_on_an_easy_task(make_blobs, make_tiny_net) -> None:
    train, val = make_blobs(96, noise=2.0, seed=0), make_blobs(64, noise=2.0, seed=1)
    trainer = _trainer(make_tiny_net(), train, val_data=val, optimizer=_sgd(0.05, momentum=0.9))
    history = trainer.fit(6).history
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["train_top1"] > history[0]["train_top1"]
    assert history[-1]["val_top1"] >= 90.0 > history[0]["train_top1"]


def test_batch_size_one_trains_a_batch_norm_model(make_blobs) -> None:
    train = make_blobs(7, num_classes=2, shape=(1, 16))
    model = models.create("fcn1d", length=16)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(model, train, batch_size=1, optimizer=_sgd(0.01))
    state = trainer.fit(1)
    assert state.global_step == 7 and state.last_record["step"] == 7
    assert state.last_record["batch_size"] == 1 and math.isfinite(state.last_record["train_loss"])
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_a_last_batch_of_one_sample_is_trained_too(make_blobs) -> None:
    trainer = _trainer(models.create("fcn1d", length=16), make_blobs(9, 2, (1, 16)), batch_size=4)
    assert trainer.fit(1).global_step == 3


def test_batch_size_below_one_is_refused(tiny_data, make_tiny_net) -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        _trainer(make_tiny_net(), tiny_data[0], batch_size=0)


# -------------------------------------------------------------------------- hooks
def test_hooks_are_called_in_the_documented_order(make_blobs, make_tiny_net) -> None:
    recorder = Recorder()
    trainer = _trainer(
        make_tiny_net(),
        make_blobs(6),
        val_data=make_blobs(4, seed=1),
        batch_size=4,
        callbacks=[recorder],
    )
    trainer.fit(2)
    epoch = ["on_epoch_start", *BATCH_HOOKS * 2, "on_validation_end", "on_epoch_end"]
    assert recorder.calls == ["on_fit_start", *epoch, *epoch, "on_fit_end"]
    assert recorder.models == {id(trainer.model)}
    assert [r["epoch"] for r in recorder.epoch_records] == [1, 2]
    assert set(recorder.validation[0]) == {"val_loss", "val_top1", "val_correct", "val_samples"}


def test_without_validation_data_there_is_no_validation_hook(tiny_data, make_tiny_net) -> None:
    recorder = Recorder()
    state = _trainer(make_tiny_net(), tiny_data[0], batch_size=32, callbacks=[recorder]).fit(1)
    assert "on_validation_end" not in recorder.calls
    assert not any(k.startswith("val_") for k in state.last_record)


def test_an_escaping_error_calls_on_exception_instead_of_on_fit_end(
    tiny_data, make_tiny_net
) -> None:
    class Boom(Callback):
        def on_batch_end(self, trainer, model, outputs, loss):
            if trainer.state.global_step == 3:
                raise RuntimeError("boom")

    recorder = Recorder()
    trainer = _trainer(make_tiny_net(), tiny_data[0], callbacks=[Boom(), recorder])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(2)
    assert recorder.calls[-1] == "on_exception" and "on_fit_end" not in recorder.calls
    assert trainer.state.epoch == 0 and trainer.state.history == []


def test_a_loss_returned_by_on_loss_is_the_one_trained_and_reported(
    tiny_data, make_tiny_net
) -> None:
    class AddConstant(Callback):
        def on_loss(self, trainer, model, loss):
            return loss + 3.0

    class ZeroLoss(Callback):
        def on_loss(self, trainer, model, loss):
            return loss * 0.0

    train, _ = tiny_data
    plain = _trainer(make_tiny_net(), train, optimizer=_sgd(0.1))
    shifted = _trainer(make_tiny_net(), train, optimizer=_sgd(0.1), callbacks=[AddConstant()])
    zeroed = _trainer(make_tiny_net(), train, optimizer=_sgd(0.1), callbacks=[ZeroLoss()])
    for t in (plain, shifted, zeroed):
        t.fit(2)
    # A constant leaves every gradient alone but is part of the reported loss.
    for a, b in zip(plain.model.parameters(), shifted.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain.state.history, shifted.state.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"] + 3.0, abs=1e-5)  # float32 loss
    # A zero loss has zero gradients: plain SGD leaves the weights at their initial values.
    fresh = make_tiny_net()
    for a, b in zip(fresh.parameters(), zeroed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert zeroed.state.last_record["train_loss"] == 0.0


def test_stop_requested_ends_training_after_the_current_epoch(
    tiny_data, make_tiny_net, tmp_path: Path
) -> None:
    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, model):
            if trainer.state.epoch == 2:
                trainer.state.stop_requested = True

    trainer = _trainer(
        make_tiny_net(), tiny_data[0], callbacks=[StopAfterTwo()], run_dir=tmp_path / "run"
    )
    state = trainer.fit(10)
    assert state.epoch == 2 and len(state.history) == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["epochs_finished"] == 2
    assert summary["epochs_planned"] == 10


def test_early_stopping_counts_epochs_without_improvement(tiny_data, make_tiny_net) -> None:
    train, val = tiny_data
    # A constant loss never improves, so epochs 2 and 3 are the two bad ones.
    trainer = _trainer(
        make_tiny_net(),
        train,
        val_data=val,
        loss_fn=lambda out, target: out.sum() * 0.0 + 1.0,
        callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=2)],
    )
    assert trainer.fit(10).epoch == 3


# ------------------------------------------------------------------------ metrics
@pytest.mark.parametrize(("num_classes", "has_top5"), [(4, False), (5, False), (10, True)])
def test_top5_is_reported_only_for_more_than_five_classes(
    make_blobs, num_classes: int, has_top5: bool
) -> None:
    train = make_blobs(40, num_classes, (6,))
    val = make_blobs(30, num_classes, (6,), seed=1, noise=3.0)
    trainer = _trainer(_mlp(6, num_classes), train, val_data=val)
    record = trainer.fit(1).last_record
    assert ("val_top5" in record) is has_top5
    if has_top5:
        with torch.no_grad():
            logits = trainer.model.eval()(val.inputs)
        hits = (logits.topk(5, dim=1).indices == val.targets[:, None]).any(dim=1)
        assert record["val_top5"] == pytest.approx(100.0 * hits.float().mean().item())
        assert record["val_top5"] >= record["val_top1"]


def test_validation_metrics_match_a_manual_evaluation(make_blobs) -> None:
    train, val = make_blobs(40, 3, (5,)), make_blobs(30, 3, (5,), seed=1, noise=2.0)
    # 30 samples in batches of 7: the last batch is smaller and must be weighted by size.
    trainer = _trainer(_mlp(5, 3), train, val_data=val, eval_batch_size=7, optimizer=_sgd(0.05))
    record = trainer.fit(2).last_record
    with torch.no_grad():
        logits = trainer.model.eval()(val.inputs)
    correct = int((logits.argmax(1) == val.targets).sum())
    assert record["val_samples"] == 30 and record["val_correct"] == correct
    assert record["val_top1"] == pytest.approx(100.0 * correct / 30)
    assert record["val_loss"] == pytest.approx(F.cross_entropy(logits, val.targets).item())


def test_training_metrics_match_a_manual_evaluation(make_blobs) -> None:
    train = make_blobs(30, 3, (5,), noise=2.0)
    # lr 0 keeps the weights fixed, so the epoch's running averages are exact means.
    trainer = _trainer(_mlp(5, 3), train, batch_size=7, optimizer=_sgd(0.0))
    record = trainer.fit(1).last_record
    with torch.no_grad():
        logits = trainer.model(train.inputs)
    assert record["train_loss"] == pytest.approx(F.cross_entropy(logits, train.targets).item())
    accuracy = 100.0 * (logits.argmax(1) == train.targets).float().mean().item()
    assert record["train_top1"] == pytest.approx(accuracy)
    assert record["step"] == 5 and record["lr"] == 0.0


# --------------------------------------------------------------------- schedulers
def _lr_history(make_blobs, name: str, epochs: int, loss_fn=None, **options: Any):
    """Per-epoch ``record["lr"]`` and per-batch LRs of a run with scheduler ``name``."""

    class BatchLR(Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_batch_start(self, trainer, model, batch, index):
            self.lrs.append(trainer.optimizer.param_groups[0]["lr"])

    train, val = make_blobs(16, 3, (5,)), make_blobs(8, 3, (5,), seed=1)
    batch_lrs = BatchLR()
    trainer = _trainer(
        _mlp(5, 3),
        train,
        val_data=val,
        batch_size=4,
        optimizer=_sgd(0.1),
        scheduler=lambda opt: build_scheduler(opt, name, epochs, 4, **options),
        loss_fn=loss_fn,
        callbacks=[batch_lrs],
    )
    history = trainer.fit(epochs).history
    return [r["lr"] for r in history], batch_lrs.lrs


def test_step_scheduler(make_blobs) -> None:
    lrs, _ = _lr_history(make_blobs, "step", 5, step_size=2, gamma=0.1)
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_exponential_scheduler_waits_for_its_start_epoch(make_blobs) -> None:
    lrs, _ = _lr_history(make_blobs, "exponential", 5, gamma=0.5, start_epoch=2)
    assert lrs == pytest.approx([0.1 * 0.5 ** max(0, e - 2) for e in range(5)])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.025])


def test_cosine_scheduler_anneals_over_the_run(make_blobs) -> None:
    lrs, _ = _lr_history(make_blobs, "cosine", 4, eta_min=0.01)
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs == pytest.approx(expected)


def test_plateau_scheduler_cuts_the_lr_when_the_validation_loss_stalls(make_blobs) -> None:
    def constant_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return out.sum() * 0.0 + 1.0

    lrs, _ = _lr_history(make_blobs, "plateau", 6, loss_fn=constant_loss, patience=1, factor=0.5)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025])


def test_plateau_scheduler_keeps_the_lr_while_the_loss_improves(make_blobs) -> None:
    lrs, _ = _lr_history(make_blobs, "plateau", 4, patience=0, factor=0.5, threshold=0.0)
    assert lrs == [0.1] * 4


def test_onecycle_scheduler_steps_every_batch(make_blobs) -> None:
    lrs, batch_lrs = _lr_history(make_blobs, "onecycle", 3)
    # 3 epochs x 4 batches; one more step than the schedule holds would raise in torch.
    assert len(batch_lrs) == 12 and len(set(batch_lrs)) == 12
    assert lrs == batch_lrs[::4]
    assert batch_lrs[0] == pytest.approx(0.1 / 25)
    assert max(batch_lrs) == pytest.approx(0.1, rel=0.05) and max(batch_lrs) <= 0.1
    assert batch_lrs[-1] == pytest.approx(0.1 / 25 / 1e4)


# ------------------------------------------------------------------------ freezing
def test_frozen_parameters_stay_unchanged(make_blobs) -> None:
    model = models.create("vgg_small", in_channels=1, num_classes=4, input_size=8)
    assert models.freeze(model, ["conv1", "re:conv[23]"]) == ["conv1", "conv2", "conv3"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer(model, make_blobs(32), optimizer=_sgd(0.05, momentum=0.9, weight_decay=1e-3))
    trainer.fit(2)
    for name, p in model.named_parameters():
        frozen = name.split(".")[0] in {"conv1", "conv2", "conv3"}
        assert torch.equal(p, before[name]) is frozen, name


@pytest.mark.parametrize("batch_size", [1, 7])
def test_train_loss_and_accuracy_are_exact_over_chunk_boundaries(
    make_blobs, make_tiny_net, batch_size: int
) -> None:
    """The epoch's train loss/top-1 (reduced in chunks of steps) equal the per-step sums."""

    class PerStep(Callback):
        def __init__(self) -> None:
            self.loss = self.correct = self.seen = 0.0

        def on_batch_end(self, trainer, model, outputs, loss):
            n = outputs.shape[0]
            self.loss += float(loss.detach()) * n
            self.correct += float(outputs.argmax(1).eq(self.targets).sum())
            self.seen += n

        def on_batch_start(self, trainer, model, batch, index):
            self.targets = batch[1]

    per_step = PerStep()
    n = 150  # > 2 chunks of 64 steps at batch 1; a partial last batch at 7
    trainer = _trainer(make_tiny_net(), make_blobs(n), batch_size=batch_size, optimizer=_sgd(0.05))
    trainer.callbacks.append(per_step)
    record = trainer.fit(1).last_record
    assert per_step.seen == n
    assert record["train_loss"] == pytest.approx(per_step.loss / n, rel=1e-6)
    assert record["train_top1"] == pytest.approx(100.0 * per_step.correct / n, abs=1e-9)
    assert 0.0 < record["train_top1"] < 100.0
